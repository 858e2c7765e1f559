#!/usr/bin/env python3
"""agproxy: a local gateway that speaks the Anthropic Messages API.

Claude Code, the Anthropic SDKs and curl point their base URL at agproxy. It checks and cleans
each request, picks an upstream and an account for the requested model, and relays the answer
back as Anthropic SSE or JSON. One module, Python 3.9 or newer, standard library only.

Sections, pure code first and I/O last (everything above section 9 runs without sockets):
 1. constants, version, error types, the redactor
 2. config
 3. HTTP/1.1 wire (sans-IO; one body framing rule and one chunked reader for both directions;
    the keys a request presents, the upstream headers a client sees)
 4. SSE (sans-IO)
 5. Anthropic requests: strict JSON, validation, token estimates, the sanitizer, warmups
 6. Anthropic answers: stream bookkeeping, upstream errors, healing, signatures, context windows
 7. translators (Anthropic <-> OpenAI Chat Completions, Anthropic <-> Gemini generateContent), and
    the client dialects' pure parts (Chat Completions, Responses and Gemini requests in as the
    internal Anthropic form; the internal events and Messages out as their streams and JSON)
 8. routing, accounts and the retry engine
 9. upstream client (asyncio-native)
10. the HTTP shell (HttpServer: connections, framing, timeouts; RequestRecord, the one record of
    each request, whose HTTP facts it fills; it knows nothing of Anthropic)
11. the gateway (Server: the handlers over one state, reload, and the access log and every other
    reader of the records; FrontDoor: the guards and routes; Learning: what attempts teach;
    StateSaver; ModelCatalog: what /v1/models lists),
    one dialect per client protocol (DIALECTS: Anthropic Messages, Chat Completions, Responses,
    Gemini; each turns its request into the internal form and answers through a StreamEncoder),
    one adapter per upstream kind (ADAPTERS: each gets a Call and the AdapterState they share,
    and leaves CallFacts, returning a WholeAnswer or an AnswerStream), and the relay pipeline
    every answer goes through
12. operations: what reads the request records (metrics, the status page's board, the usage
    ledger), the status page, logging, the config watcher (reload), the state file, `check`
13. CLI and main()

A request's way: HttpServer reads it (refusing a bad head before its body), Server.admit checks
origin, host, key and route, the handler's dialect turns it into the internal Anthropic form
(Server._generate), which is validated and routed (within the client's models and limits); a
warmup is answered locally, else attempts run over the account pool (run_attempts). Each attempt
is its kind's Adapter.messages(call): prepare the request (clean-up, translation, what the
upstream rejected), send, heal past a 400 that names what to drop, then turn the answer into
Anthropic events (answer_events: Event objects, decoded once) and relay them (first_events,
relay_events, which encodes each batch once on its way out, with the client dialect's
StreamEncoder) or assemble them (accumulate_events). What the attempt learned (lessons, windows,
changes, the answer's usage) it leaves in the call's facts, which the gateway applies. The
request's record, filled on the way, goes to the access log and the other readers when its answer
ends (Server.finished). A new upstream kind is one Adapter subclass in ADAPTERS plus its
translators; a new client protocol is one Dialect in DIALECTS, its translators and its routes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import collections
import copy
import dataclasses
import datetime
import errno
import fnmatch
import gc
import hashlib
import hmac
import http
import io
import ipaddress
import json
import logging
import math
import os
import random
import re
import signal
import socket
import ssl
import stat
import sys
import threading
import time
import urllib.parse
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Deque,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; `agproxy state clear` then checks the saved pid only
    fcntl = None  # type: ignore[assignment]

__version__ = "0.1.0"
__all__ = [
    "AgproxyError",
    "InvalidRequest",
    "ProtocolError",
    "AuthenticationFailed",
    "PermissionDenied",
    "NotFound",
    "UpstreamFailure",
    "ModelRefused",
    "ConfigError",
    "Config",
    "load_config",
    "RequestParser",
    "ResponseParser",
    "SSEDecoder",
    "encode_sse",
    "sanitize_request",
    "anthropic_to_openai",
    "openai_to_anthropic",
    "OpenAIStreamTranslator",
    "MessageAccumulator",
    "chat_request_to_anthropic",
    "ChatStreamEncoder",
    "responses_request_to_anthropic",
    "ResponsesStreamEncoder",
    "UnfencedStream",
    "gemini_request_to_anthropic",
    "GeminiStreamEncoder",
    "Dialect",
    "DIALECTS",
    "StreamEncoder",
    "AccountPool",
    "decide",
    "UpstreamClient",
    "Server",
    "Metrics",
    "main",
]

# =====================================================================================
# 1. Constants, version, error types, the redactor
#    Nothing here awaits or touches sockets.
# =====================================================================================

DEFAULT_PORT = 8045
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"

#: The Anthropic error type for each HTTP status agproxy answers with.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def error_type_for_status(status: int) -> str:
    """The Anthropic error type that matches an HTTP status (4xx default invalid_request_error)."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    if status == 503:
        return "overloaded_error"
    return "api_error" if status >= 500 else "invalid_request_error"


class _LazyPattern:
    """A regular expression compiled at its first use: for the patterns of rare paths (an upstream's
    error words, healing, other dialects' names, the CLI), which compiled at import cost every start
    about 0.1 ms each. It answers what its compiled pattern answers; after the first use the methods
    below are the compiled pattern's own, found without this class's ``__getattr__``."""

    _METHODS = ("match", "fullmatch", "search", "sub", "subn", "split", "findall", "finditer")

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self._source = (pattern, flags)

    def __getattr__(self, name: str) -> Any:
        compiled = re.compile(*self._source)
        for method in self._METHODS:
            setattr(self, method, getattr(compiled, method))
        return getattr(compiled, name)


#: Words in an error message that make Claude Code (2.1.197 and 2.1.332, read in their bundled code)
#: replace the whole message with its own: "x-api-key" anywhere, whatever the status, becomes "Not
#: logged in · Please run /login". Said as "x api key" instead, the upstream's meaning is kept and
#: shown. Its other patterns need no rewording (see tests/test_messages.py for the survey).
_CLAUDE_CODE_TRIGGERS = _LazyPattern(r"x-api-key", re.IGNORECASE)


def client_words(message: str) -> str:
    """An error message as a client is shown it: the one place every Anthropic-shaped error passes,
    where words a client would misread (:data:`_CLAUDE_CODE_TRIGGERS`) are reworded."""
    return _CLAUDE_CODE_TRIGGERS.sub("x api key", message)


def error_body(error_type: str, message: str) -> Dict[str, Any]:
    """The Anthropic error JSON shape, its message in :func:`client_words`."""
    return {"type": "error", "error": {"type": error_type, "message": client_words(message)}}


class AgproxyError(Exception):
    """Root of every error agproxy answers with.

    Each carries the HTTP status and the Anthropic error type of its answer, and optional extra
    response headers (``retry-after``, for one). One function in the server turns it into a response.
    """

    status: int = 500
    error_type: str = "api_error"
    #: for errors an upstream answered: what its status means, and when it says a rate limit resets
    upstream_status: int = 0
    #: the status the upstream sent, where it differs from what it means (Gemini's 400 for a bad key)
    upstream_said: int = 0
    reset_s: Optional[float] = None
    #: no retry can change this answer (every key of the upstream rejected, for one)
    final: bool = False
    #: what the upstream itself said, where agproxy words the error its own way (a rejected key)
    upstream_words: str = ""

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        error_type: Optional[str] = None,
        headers: Sequence[Tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
            if error_type is None:
                error_type = error_type_for_status(status)
        if error_type is not None:
            self.error_type = error_type
        self.headers = list(headers)

    def body(self) -> Dict[str, Any]:
        """The Anthropic-shaped error body for this error."""
        return error_body(self.error_type, self.message)


class InvalidRequest(AgproxyError):
    """The client's request cannot be served as sent (400 unless a more exact status is given)."""

    status = 400
    error_type = "invalid_request_error"


class ProtocolError(InvalidRequest):
    """Malformed HTTP from the client; the connection is closed after the answer."""


class AuthenticationFailed(AgproxyError):
    """The client did not present agproxy's key."""

    status = 401
    error_type = "authentication_error"


class PermissionDenied(AgproxyError):
    """The request is refused whatever key it carries (browser origin, foreign Host)."""

    status = 403
    error_type = "permission_error"


class NotFound(AgproxyError):
    """No such route or model."""

    status = 404
    error_type = "not_found_error"


class UpstreamFailure(AgproxyError):
    """The upstream could not be reached or failed in a way that is not the client's fault."""

    status = 502
    error_type = "api_error"


class ModelRefused(InvalidRequest):
    """An upstream refused the model asked for to the key it was sent (a key that may use other
    models): a 400 naming the model, which clients show as it is (Claude Code tells a 401/403 to
    log in), and the account rests for that model only."""


class UpstreamClosed(UpstreamFailure):
    """The upstream closed the connection before a byte of its answer (a pooled connection the
    server had already dropped: the request is sent again on a fresh one)."""


#: Most of an upstream's error message that a log line quotes (real ones are a sentence or two).
MAX_LOGGED_WORDS = 300

#: The status of "the upstream rejected agproxy's key": agproxy's config, which no retry changes.
#: Not 401 or 403 (the client would blame its own key, and Claude Code says to run /login), nor a
#: 5xx (Claude Code adds "This is a server-side issue, usually temporary — try again in a moment"):
#: 424 Failed Dependency, a 4xx that Claude Code shows in agproxy's own words ("API Error: 424 ...").
KEY_REJECTED_STATUS = 424


class NotStructured(UpstreamFailure):
    """An answer that should be JSON by the request's schema (structured output, asked for by a
    client dialect) is not: the upstream's model cannot do structured output, and no retry makes
    it. A 424 (see KEY_REJECTED_STATUS), final: Gemini CLI's routing call then falls back to its
    default model at once, where an answer it cannot parse had it retry for 100 s."""

    status = KEY_REJECTED_STATUS
    final = True


class KeyRejected(UpstreamFailure):
    """An upstream rejected agproxy's key for it: the account's api_key needs fixing."""

    status = KEY_REJECTED_STATUS
    final = True  # a retry sends the same key


class ConfigError(AgproxyError):
    """The configuration is unusable; the message names the key and the problem."""


#: A client's key shorter than this is warned of (``agproxy keys new`` makes 47 characters).
MIN_CLIENT_KEY_CHARS = 16
#: Configured keys shorter than this are not searched for ("none", "EMPTY" and the like are
#: placeholders, and hiding every such word would mangle answers).
_MIN_SECRET_CHARS = 8
#: What a key looks like even when agproxy does not know it (an upstream echoing a key in part):
#: Anthropic and OpenAI style ``sk-...``, Google ``AIza...``, agproxy's own client keys ``agp-...``
#: (``agproxy keys new``), and bearer tokens.
_KEY_SHAPES = (r"agp-[A-Za-z0-9_\-]{20,}|sk-[A-Za-z0-9_\-]{8,}|AIza[0-9A-Za-z_\-]{20,}"
               r"|(?<=Bearer )[A-Za-z0-9._~+/\-]{16,}=*")
REDACTED = "[redacted]"
#: A run of characters without a blank, as a key is (a configured key is printable ASCII), from a
#: place or up to a text's end: an excerpt's cut is moved off one (:func:`excerpt`).
_RUN_FROM = re.compile(r"\S*")
_RUN_TO_END = re.compile(r"\S*\Z")
#: :meth:`Redactor.text` remembers what it made of texts up to this long: a request's header names and
#: values, its model, upstream and account names are the same few on every request (28 regex
#: substitutions a small request, 3 % of its instructions), each looked up once per config.
_HIDDEN_MEMO_CHARS = 256
#: The most such texts remembered at once; then they are forgotten together (unique ones, a
#: request id, a date, come and go).
_HIDDEN_MEMO_ENTRIES = 1024


def excerpt(text: str, limit: int) -> str:
    """The start of ``text`` (words agproxy could not read, quoted in its own) cut to about
    ``limit`` characters, never inside a run of characters without a blank: a key cut in two is
    not the configured key the redactor hides, and its first part would go out (an upstream that
    echoes its account's key in a chunk it garbles). A run the cut falls in is kept whole where it
    ends within ``limit`` more characters (the redactor finds the key there), else left out."""
    if len(text) <= limit or text[limit - 1].isspace() or text[limit].isspace():
        return text[:limit]
    end = _RUN_FROM.match(text, limit, 2 * limit + 1).end()
    if end == len(text) or text[end].isspace():
        return text[:end]
    return text[:_RUN_TO_END.search(text, 0, limit).start()]


#: A JSON escape of a printable ASCII character (after an even run of backslashes, so it is one).
_JSON_ASCII_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\(?:u00([2-7][0-9a-fA-F])|(/))")


def _unescape_ascii(match: re.Match) -> bytes:
    """The character a JSON escape stands for, where writing it plainly means the same JSON."""
    if match.group(3):
        return match.group(1) + b"/"
    char = int(match.group(2), 16)
    if char in (0x22, 0x5C):  # a quote, a backslash: in their short escapes, as a spelling has them
        return match.group(1) + b"\\" + bytes((char,))
    if char == 0x7F:  # DEL: keep it escaped
        return match.group(0)
    return match.group(1) + bytes((char,))


def _base64_inner(secret: bytes) -> List[str]:
    """The base64 characters that spell ``secret`` whatever surrounds it (``user:KEY`` in a Basic
    header, say): at each of the three offsets it can start at within a 3-byte group, the
    characters whose 6 bits all come from the secret, in both alphabets (standard and URL-safe)."""
    out = []
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + secret).decode("ascii")
        first, end = -(-offset * 8 // 6), (offset + len(secret)) * 8 // 6  # chars wholly inside the secret
        inner = encoded[first:end]
        out += [inner, inner.replace("+", "-").replace("/", "_")]
    return out


def secret_spellings(secret: str) -> List[str]:
    """The ways ``secret`` can be written out in text an upstream echoes or agproxy writes: as it
    is, JSON-escaped (a key holding ``"`` or ``\\``), as Python's repr shows it, URL-encoded, and in
    base64 at every alignment (:func:`_base64_inner`). Spellings shorter than
    ``_MIN_SECRET_CHARS`` are left out (they would match ordinary words)."""
    spellings = [secret, json.dumps(secret)[1:-1], repr(secret)[1:-1], urllib.parse.quote(secret, safe=""),
                 urllib.parse.quote_plus(secret, safe="")]
    spellings += _base64_inner(secret.encode("utf-8"))
    return [s for s in dict.fromkeys(spellings) if len(s) >= _MIN_SECRET_CHARS]


class _TailMatcher:
    """Finds the longest end of a text that begins a spelling, or is one (of one type: str or
    bytes): the part a stream holds back until the next piece shows whether a secret goes on in
    it (a whole one is held too, so that it is never cut in two). One regex scan of the last
    ``longest`` characters finds where a spelling's first three characters occur (the text is a
    delta's, short); the ends shorter than three are looked up in sets."""

    def __init__(self, spellings: Sequence[Any]) -> None:
        self.longest = max((len(s) for s in spellings), default=0)
        self.by_start: Dict[Any, List[Any]] = {}
        for spelling in spellings:
            self.by_start.setdefault(spelling[:3], []).append(spelling)
        self.short = {s[:n] for s in spellings for n in (1, 2)}
        heads = "|".join(re.escape(s if isinstance(s, str) else s.decode("latin-1")) for s in self.by_start)
        binary = bool(spellings) and isinstance(spellings[0], bytes)
        self.starts = re.compile(f"(?={heads})".encode("latin-1") if binary else f"(?={heads})") \
            if spellings else None

    def hold(self, text: Any) -> int:
        """How many characters at the end of ``text`` may be (the start of) a spelling (0: none)."""
        if self.starts is None or not text:
            return 0
        size = len(text)
        match = self.starts.search(text, max(0, size - self.longest))
        while match is not None:  # rare: a spelling's first three characters are there
            at = match.start()
            rest = text[at:]
            if any(len(s) >= len(rest) and s.startswith(rest) for s in self.by_start[rest[:3]]):
                return size - at
            match = self.starts.search(text, at + 1)
        short = self.short
        if size >= 2 and text[-2:] in short:
            return 2
        return 1 if text[-1:] in short else 0


#: The start of a ``\\uXXXX`` escape just before a position (a key's digits must not be found in it).
_OPEN_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u[0-9a-fA-F]{0,3}\Z")


class Redactor:
    """Hides secrets in what agproxy writes: the configured keys wherever they appear (answers, error
    messages, log lines), in every spelling of :func:`secret_spellings`, and in text that is
    agproxy's own (errors, logs) anything shaped like a key. Model output passes with only the
    configured keys hidden, so an answer that shows an example ``sk-...`` string is not changed.
    Everything is compiled here, once per config. Bytes relayed to a client (every event) are
    first searched for each spelling as a substring, which in the usual case (none there) costs
    less than one scan with a regex of all the spellings."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._compile(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Hide ``secrets`` too from now on (a reloaded config's keys), and still every one before:
        an answer begun under the old config may still echo an old key."""
        self._compile(list(self.secrets) + list(secrets))

    def _compile(self, secrets: Iterable[str]) -> None:
        #: the secrets hidden (the configured keys, each at least _MIN_SECRET_CHARS long)
        self.secrets: Tuple[str, ...] = tuple(sorted({k for k in secrets if len(k) >= _MIN_SECRET_CHARS}))
        spellings = sorted({s for k in self.secrets for s in secret_spellings(k)}, key=len, reverse=True)
        #: what a client reads (a delta's text, an error's message): the spellings
        self.spellings: Tuple[str, ...] = tuple(spellings)
        known = "|".join(re.escape(s) for s in spellings)
        # in bytes (JSON on the wire) a spelling may appear JSON-escaped once more
        self._needles = tuple(sorted({b for s in spellings for b in (s.encode(), json.dumps(s)[1:-1].encode())},
                                     key=len, reverse=True))
        self._known_bytes = re.compile(b"|".join(re.escape(b) for b in self._needles)) if spellings else None
        self._known = re.compile(known) if spellings else None
        self._text = re.compile(f"{known}|{_KEY_SHAPES}" if spellings else _KEY_SHAPES)
        self.tail = _TailMatcher(spellings)
        self.tail_bytes = _TailMatcher([s.encode() for s in spellings])
        #: short texts already hidden, and what they became (with these secrets: emptied here)
        self._hidden: Dict[str, str] = {}

    def text(self, value: str) -> str:
        """``value`` with every configured key and key-shaped string replaced."""
        hidden = self._hidden.get(value)
        if hidden is not None:
            return hidden
        hidden = self._text.sub(REDACTED, value)
        if len(value) <= _HIDDEN_MEMO_CHARS:
            if len(self._hidden) >= _HIDDEN_MEMO_ENTRIES:
                self._hidden.clear()
            self._hidden[value] = hidden
        return hidden

    def spoken(self, value: str) -> str:
        """``value`` (text a client reads, such as a model's) with every configured key replaced."""
        return value if self._known is None else self._known.sub(REDACTED, value)

    def spans(self, value: str) -> List[Tuple[int, int]]:
        """Where the configured keys are spelled in ``value`` (text a client reads), as (start, end)."""
        return [] if self._known is None else [match.span() for match in self._known.finditer(value)]

    def data(self, value: bytes) -> bytes:
        """``value`` with every configured key replaced (bytes relayed to a client), also where JSON
        escapes spell it (``sk\\u002dant...``): such a value comes back with those escapes written
        out, which is the same JSON. A key is not looked for inside a ``\\uXXXX`` escape."""
        if self._known_bytes is None:
            return value
        if b"\\u00" in value or b"\\/" in value:
            plain = _JSON_ASCII_ESCAPE.sub(_unescape_ascii, value)
            return self._replace(plain) if any(needle in plain for needle in self._needles) else value
        for needle in self._needles:
            if needle in value:
                return self._replace(value)
        return value

    def _replace(self, value: bytes) -> bytes:
        assert self._known_bytes is not None
        out: List[bytes] = []
        done = at = 0
        while True:
            match = self._known_bytes.search(value, at)
            if match is None:
                break
            if _OPEN_ESCAPE.search(value, max(0, match.start() - 8), match.start()):
                at = match.start() + 1  # its first characters are an escape's digits: look further on
                continue
            out += [value[done:match.start()], REDACTED.encode()]
            done = at = match.end()
        return b"".join(out) + value[done:] if out else value


# =====================================================================================
# 2. Config
#    The config dataclasses (every default written once, there); load JSON, expand ${VAR} and
#    ${VAR:-default}, validate with messages naming the key; loopback names. Nothing here touches
#    sockets; the environment is passed in.
# =====================================================================================

UPSTREAM_KINDS = ("anthropic", "openai", "gemini", "demo")
AUTH_MODES = ("off", "strict", "all_except_health", "auto")
PROFILES = ("anthropic", "compatible")
LOG_LEVELS = ("debug", "info", "warning", "error")
#: ``text``: one readable line per event; ``json``: one JSON object per line, for Loki, ELK or journald.
LOG_FORMATS = ("text", "json")
#: The largest int that float() takes (beyond it, OverflowError): a config number past it is refused.
_FLOAT_LIMIT = 2 ** 1023
#: The largest duration or weight a config may give: 10^9 s is 31 years, and bigger ones overflow
#: what they are added to (a deadline, a sum of weights) or mean a typo.
MAX_CONFIG_NUMBER = 1e9
#: No model has a window of a billion tokens; past it a number is a typo (or 400 digits).
MAX_CONTEXT_WINDOW = 10 ** 9

#: Top-level fields that every Anthropic-compatible server takes.
BASIC_FIELDS = frozenset((
    "model", "messages", "system", "max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences",
    "tools", "tool_choice", "thinking", "metadata",
))
#: Keys of a custom tool definition that every Anthropic-compatible server takes.
BASIC_TOOL_FIELDS = frozenset(("name", "description", "input_schema", "type"))


@dataclasses.dataclass(frozen=True)
class Profile:
    """What an upstream accepts. The sanitizer changes exactly what this says, nothing more.

    ``fields`` and ``tool_fields`` are allow-lists (None keeps everything); ``system_messages`` says
    what happens to ``{"role": "system"}`` entries of ``messages``: ``keep``, or move them into
    ``system`` or into the next ``user`` turn; ``thinking`` ``basic`` maps ``adaptive`` to ``enabled``
    with a budget and drops ``display``.
    """

    cache_control: bool = True
    betas: bool = True
    fields: Optional[FrozenSet[str]] = None
    tool_fields: Optional[FrozenSet[str]] = None
    server_tools: bool = True
    system_messages: str = "keep"
    merge_roles: bool = False
    thinking: str = "keep"
    billing_header: bool = True  # keep Claude Code's x-anthropic-billing-header line in the system prompt


PROFILE_DEFAULTS = {
    "anthropic": Profile(),
    "compatible": Profile(cache_control=False, betas=False, fields=BASIC_FIELDS, tool_fields=BASIC_TOOL_FIELDS,
                          server_tools=False, system_messages="system", merge_roles=True, thinking="basic",
                          billing_header=False),
    # What the translation to Chat Completions starts from (it drops the rest itself).
    "openai": Profile(cache_control=False, betas=False, system_messages="system", merge_roles=True,
                      billing_header=False),
}
SYSTEM_MESSAGE_MODES = ("keep", "system", "user")
THINKING_MODES = ("keep", "basic")


@dataclasses.dataclass(frozen=True)
class OpenAIOptions:
    """How to speak to one OpenAI-compatible server; the defaults suit vLLM, Ollama and llama.cpp."""

    max_tokens_field: str = "max_tokens"  # or "max_completion_tokens" (OpenAI's reasoning models)
    reasoning_effort: bool = False  # send Anthropic thinking as reasoning_effort low/medium/high
    thinking_body: Optional[Dict[str, Any]] = None  # merged into the body when thinking is on
    reasoning_history: bool = False  # send earlier thinking back as reasoning_content
    top_k: bool = False  # the server takes top_k (vLLM, llama.cpp do; OpenAI does not)
    stream_usage: bool = True  # ask for stream_options.include_usage
    tokenize: Optional[str] = None  # "vllm" or "llamacpp": count tokens with the server's /tokenize
    clean_schemas: bool = True  # drop $schema/$id/$comment from tool schemas


TOKENIZE_STYLES = ("vllm", "llamacpp")


@dataclasses.dataclass(frozen=True)
class Account:
    """One key of an upstream. Only ``name`` is ever shown; the key never leaves the process."""

    name: str
    api_key: str = dataclasses.field(repr=False)
    weight: float = 1.0
    models: Tuple[str, ...] = ("*",)
    max_concurrency: int = 0

    def serves(self, model: str) -> bool:
        """Whether this account may serve ``model`` (its ``models`` globs)."""
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


@dataclasses.dataclass(frozen=True)
class Upstream:
    """One upstream service and its pool of accounts."""

    name: str
    kind: str
    base_url: str
    accounts: Tuple[Account, ...]
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    profile: str = "anthropic"
    rules: Profile = dataclasses.field(default_factory=lambda: Profile())
    context_window: Optional[int] = None
    openai: OpenAIOptions = dataclasses.field(default_factory=lambda: OpenAIOptions())
    extra_body: Optional[Dict[str, Any]] = None
    headers: Tuple[Tuple[str, str], ...] = ()
    #: the credentials in ``headers`` and ``extra_body`` (:func:`upstream_credentials`), for the Redactor
    credentials: Tuple[str, ...] = dataclasses.field(default=(), repr=False)


def key_sha256(key: str) -> str:
    """A key's SHA-256 as ``sha256sum`` prints it (lowercase hex of its UTF-8 bytes): what
    ``clients[].api_key_sha256`` holds, and what a presented key is compared by."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclasses.dataclass(frozen=True)
class Client:
    """A person or a job with a key of its own (``clients``): the models and upstreams it may use,
    and its limits (0: none). Only the key's SHA-256 is compared; a key given in plain text is kept
    too, so that the redactor hides it."""

    name: str
    key_sha256: str = dataclasses.field(repr=False)
    api_key: str = dataclasses.field(default="", repr=False)
    models: Tuple[str, ...] = ("*",)
    upstreams: Tuple[str, ...] = ()  # empty: every upstream
    max_concurrency: int = 0
    requests_per_minute: int = 0
    tokens_per_day: int = 0

    def may_use(self, model: str) -> bool:
        """Whether ``models`` (globs) lets this client ask for ``model``."""
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def limits(self) -> Dict[str, int]:
        """The limits under the config's names."""
        return {"max_concurrency": self.max_concurrency, "requests_per_minute": self.requests_per_minute,
                "tokens_per_day": self.tokens_per_day}


@dataclasses.dataclass(frozen=True)
class ModelRule:
    """A ``model_map`` entry: the first rule whose glob fits the requested model wins."""

    match: str
    upstreams: Tuple[str, ...]
    model: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything agproxy runs with, built once by :func:`load_config`."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    auth_mode: str = "auto"
    api_key: str = dataclasses.field(default="", repr=False)
    #: guards agproxy's own routes (accounts, stats, usage, reload, the status page's data, /metrics);
    #: without it, api_key does
    admin_api_key: str = dataclasses.field(default="", repr=False)
    #: a key per person or job (Teams), beside api_key
    clients: Tuple[Client, ...] = ()
    upstreams: Tuple[Upstream, ...] = ()
    model_map: Tuple[ModelRule, ...] = ()
    max_retry_attempts: int = 3
    warmup_interception: bool = True
    force_stream_internally: bool = True
    ping_interval_s: float = 10.0
    max_body_bytes: int = 33554432
    #: request bodies held at once, all connections together (each costs a few times its size
    #: while parsed and sent on): past it a body is refused with 529 before it is read
    max_inflight_body_bytes: int = 268435456
    max_header_bytes: int = 65536
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    idle_timeout_s: float = 75.0
    write_timeout_s: float = 60.0
    shutdown_grace_s: float = 30.0
    max_connections: int = 1024
    allowed_origins: Tuple[str, ...] = ()
    server_names: Tuple[str, ...] = ()
    log_level: str = "info"
    log_format: str = "text"
    #: reload the config when its file changes (as SIGHUP and POST /v1/agproxy/reload do)
    watch_config: bool = False
    state_file: str = ""
    source: str = "built-in demo config"

    def upstream(self, name: str) -> Upstream:
        """The upstream called ``name`` (validated to exist at load time)."""
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        raise KeyError(name)

    def secrets(self, environ: Optional[Dict[str, str]] = None) -> List[str]:
        """Every secret agproxy holds, for the :class:`Redactor`: its own key, each account's, the
        credentials in each upstream's ``headers`` and ``extra_body``, and those of the proxy
        that ``environ``'s ``HTTPS_PROXY``/``HTTP_PROXY`` name (:func:`proxy_credentials`)."""
        return [self.api_key, self.admin_api_key] + [c.api_key for c in self.clients] + \
            [a.api_key for u in self.upstreams for a in u.accounts] + \
            [c for u in self.upstreams for c in u.credentials] + proxy_credentials(environ or {})

    def effective_auth_mode(self) -> str:
        """``auto`` resolved: off on a loopback bind address, else all_except_health. With
        ``clients`` it is all_except_health on loopback too: a team's agproxy behind a reverse proxy
        on the same machine binds loopback, and with auth off anyone sending no key (or a wrong one)
        would be served past every client's models and limits."""
        if self.auth_mode != "auto":
            return self.auth_mode
        return "off" if is_loopback_host(self.host) and not self.clients else "all_except_health"

    def auth_problems(self) -> List[str]:
        """What is wrong with the keys for the auth mode, said at start and by ``check``: auth on
        with no key to pass (every protected request gets 401); clients with auth off (their keys
        are taken when sent, but a request without one is served past their models and limits, and
        reaches agproxy's own routes); clients with auth on and no admin key (no key reaches
        agproxy's own routes); a client's key too short to be one."""
        mode, problems = self.effective_auth_mode(), []
        if mode != "off" and not self.api_key and not self.clients:
            problems.append(f"auth_mode is {mode} but api_key is empty (and no clients): every protected request "
                            "gets 401")
        if mode == "off" and self.clients:
            problems.append("auth_mode is off but clients are configured: a request without a client's key is served "
                            "anonymously, past every client's models and limits; set auth_mode to all_except_health")
        if mode != "off" and self.clients and not self.admin_api_key and not self.api_key:
            problems.append("clients are configured but neither admin_api_key nor api_key: no key reaches agproxy's "
                            "own routes (usage, status page data, reload, metrics); set admin_api_key")
        for client in self.clients:
            if client.api_key and len(client.api_key) < MIN_CLIENT_KEY_CHARS:
                problems.append(f"client {client.name!r}: its key is shorter than {MIN_CLIENT_KEY_CHARS} characters, "
                                "easy to guess and not hidden where it is echoed; `agproxy keys new` makes one")
        return problems

    def auth_summary(self) -> str:
        """One line on who may do what, for the start-up log."""
        mode = self.effective_auth_mode()
        if mode == "off":
            return "auth: off (no key needed)" + (f"; {len(self.clients)} client key(s) named when sent"
                                                  if self.clients else "")
        admin = "admin_api_key" if self.admin_api_key else "api_key" if self.api_key else "none"
        return (f"auth: {mode}; api_key {'set' if self.api_key else 'not set'}, {len(self.clients)} client key(s), "
                f"admin key for agproxy's own routes: {admin}")


_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def is_loopback_host(host: str) -> bool:
    """True for loopback names and addresses (``localhost``, ``*.localhost``, 127/8, ::1)."""
    host = host.strip("[]").lower().rstrip(".")
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


DEMO_UPSTREAM = Upstream(name="demo", kind="demo", base_url="", accounts=(Account("demo", ""),))

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: str, environ: Dict[str, str], where: str, unset: Optional[List[str]] = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in a config string from ``environ``; an unset
    variable without a default is a :class:`ConfigError`, or (given ``unset``) noted there."""

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        found = environ.get(name)
        if found is None or (found == "" and default is not None):
            if default is None:
                if unset is None:
                    raise ConfigError(f"{where}: environment variable {name} is not set")
                unset.append(f"{where}: environment variable {name} is not set")
                return ""
            return default
        return found

    return _ENV_REFERENCE.sub(substitute, value)


def _expand_tree(value: Any, environ: Dict[str, str], where: str, unset: Optional[List[str]] = None) -> Any:
    """``value`` with every string expanded; the first call gathers every unset variable and
    reports them in one error, so that a new config is fixed in one go, not one run per variable."""
    if unset is None:
        unset = []
        expanded = _expand_tree(value, environ, where, unset)
        if unset:
            raise ConfigError("; ".join(unset[:20]) + (f"; and {len(unset) - 20} more" if len(unset) > 20 else ""))
        return expanded
    if isinstance(value, str):
        expanded = expand_env(value, environ, where, unset)
        _no_surrogate(expanded, where)  # from the file or from a variable's undecodable bytes
        return expanded
    if isinstance(value, list):
        return [_expand_tree(item, environ, f"{where}[{i}]", unset) for i, item in enumerate(value)]
    if isinstance(value, dict):
        for key in value:
            _no_surrogate(key, where, is_key=True)
        return {k: _expand_tree(v, environ, f"{where}.{k}" if where else k, unset) for k, v in value.items()}
    return value


def _no_surrogate(text: str, where: str, is_key: bool = False) -> None:
    """JSON may spell a lone UTF-16 surrogate (``"\\ud800"``), which is no text: it cannot be
    printed, logged or sent, so a config holding one is refused where it is, naming the key."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        what = "a key" if is_key else "it"
        raise ConfigError(f"{where + ': ' if where else ''}{what} holds a lone surrogate ({_shown(text)}), which is "
                          "not text; write the character itself or its pair of \\u escapes") from None


def _shown(value: Any, containers: bool = True) -> str:
    """A config or state value as an error message quotes it: JSON, ASCII only, at most 60
    characters (a number too long for that is said by its length). Without ``containers`` an object
    or a list is said by its kind and size only: a config's object in the wrong place may hold keys
    (``"clients": {"alice": "agp-..."}``)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 20:
        return f"a number of {len(str(abs(value)))} digits"
    if containers:
        return json.dumps(value)[:60]
    if isinstance(value, dict):
        return f"an object of {len(value)} key(s)"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    return json.dumps(value)[:60]


#: What a config value is, in words, where its value must not be shown (a secret of the wrong type).
_TYPE_WORDS = {list: "a list", dict: "an object", int: "a number", float: "a number", bool: "true or false",
               type(None): "null"}


def _with_suggestion(name: str, known: Iterable[str]) -> str:
    """An unknown key's name, with the known one it was likely meant to be (``auth_mod`` -> did
    you mean ``auth_mode``?)."""
    import difflib  # here, not at the top: only a config with a typo needs it (~0.2 MB at start-up)

    near = difflib.get_close_matches(name[:100], list(known), n=1, cutoff=0.7)
    return f"{name[:100]} (did you mean {near[0]}?)" if near else name[:100]


class _Fields:
    """Reads one JSON object of the config, checking each key's type and rejecting unknown keys."""

    def __init__(self, obj: Any, where: str, known: Iterable[str]) -> None:
        if not isinstance(obj, dict):
            got = _TYPE_NAMES.get(type(obj), "null")
            raise ConfigError(f"{where + ': ' if where else ''}must be an object, got {got}")
        unknown = sorted(set(obj) - set(known))
        if unknown:
            names = ", ".join(_with_suggestion(str(name), known) for name in unknown)
            plural = "s" if len(unknown) > 1 else ""
            raise ConfigError(f"{where + ': ' if where else ''}unknown key{plural} {names}")
        self.obj = obj
        self.where = where

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: type, default: Any) -> Any:
        if key not in self.obj:
            return default
        value = self.obj[key]
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > _FLOAT_LIMIT:  # float() of 400 digits raises OverflowError
                raise ConfigError(f"{self.path(key)}: must be a number up to {MAX_CONFIG_NUMBER:g}, "
                                  f"got {_shown(value)}")
            value, ok = float(value), True
        if not ok:
            raise ConfigError(f"{self.path(key)}: must be {_TYPE_NAMES[kind]}, "
                              f"got {_shown(value, containers=False)}")
        if kind is float and not math.isfinite(value):
            raise ConfigError(f"{self.path(key)}: must be a finite number, got {value}")
        return value

    def secret(self, key: str) -> str:
        """A key or token: it goes into a header, so ASCII without control characters or spaces.
        What is wrong with it is said without its value."""
        value = self.obj.get(key, "")
        if not isinstance(value, str):
            raise ConfigError(f"{self.path(key)}: must be a string, got {_TYPE_WORDS.get(type(value), 'another type')} "
                              "(its value is not shown: it is a secret)")
        if not _HEADER_TEXT.fullmatch(value) or " " in value:
            raise ConfigError(f"{self.path(key)}: must be printable ASCII without spaces (it is sent in a header)")
        return value

    def text(self, key: str, default: Any = None, required: bool = False) -> Any:
        if required and key not in self.obj:
            raise ConfigError(f"{self.path(key)}: is required")
        return self.get(key, str, default)

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        value = self.text(key, default)
        if value not in choices:
            raise ConfigError(f"{self.path(key)}: must be one of {', '.join(choices)}")
        return value

    def number(self, key: str, default: float, minimum: float, maximum: float = MAX_CONFIG_NUMBER) -> float:
        value = self.get(key, float, default)
        if value < minimum:
            raise ConfigError(f"{self.path(key)}: must be at least {minimum:g}, got {value:g}")
        if value > maximum:
            raise ConfigError(f"{self.path(key)}: must be at most {maximum:g}, got {value:g}")
        return value

    def integer(self, key: str, default: int, minimum: int, maximum: int = 2**62) -> int:
        value = self.get(key, int, default)
        if not minimum <= value <= maximum:
            raise ConfigError(f"{self.path(key)}: must be between {minimum} and {maximum}, got {_shown(value)}")
        return value

    def strings(self, key: str) -> Tuple[str, ...]:
        value = self.get(key, list, [])
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(f"{self.path(key)}[{i}]: must be a string")
        return tuple(value)


#: Headers that frame a request or its connection: agproxy writes them, a config may not.
_FRAMING_HEADERS = frozenset(("host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
                              "te", "trailer", "expect", "proxy-connection", "proxy-authorization"))
#: A header name (an RFC 9110 token).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Text that can go into a header as it is: printable ASCII and tabs (empty allowed).
_HEADER_TEXT = re.compile(r"[\t\x20-\x7e]*")
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "an object"}

_CONFIG_KEYS = {f.name for f in dataclasses.fields(Config)} - {"source"}
_UPSTREAM_KEYS = ("name", "kind", "base_url", "accounts", "timeout_s", "connect_timeout_s", "profile", "sanitize",
                  "context_window", "openai", "extra_body", "headers")


def _default(cls: type, name: str) -> Any:
    """A dataclass field's default: each default is written once, where the field is declared."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _parse_base_url(value: str, where: str) -> str:
    if not re.fullmatch(r"[\x21-\x7e]+", value):
        raise ConfigError(f"{where}: must be a URL of printable ASCII without spaces, got {value[:100]!r}")
    try:
        parts = urllib.parse.urlsplit(value)
        _ = parts.port
    except ValueError as exc:
        raise ConfigError(f"{where}: is not a valid URL ({exc}): {value[:100]!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: must be an http:// or https:// URL, got {value[:100]!r}")
    labels = parts.hostname.split(".")  # ASCII (checked above): what the idna codec checks of it, without
    # importing it (with stringprep and unicodedata, ~0.5 MB at start-up): no empty or over-long label
    if any(not 0 < len(label) < 64 for label in labels[:-1]) or len(labels[-1]) >= 64:
        raise ConfigError(f"{where}: has a host name that cannot be looked up: {parts.hostname[:100]!r}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{where}: must not carry credentials (user:password@); put the key in the account's "
                          "api_key or in the upstream's headers")
    if parts.query or parts.fragment:
        raise ConfigError(f"{where}: must not have a query string or fragment")
    return value.rstrip("/")


#: Names of headers (and extra_body keys) whose values are credentials: Authorization, x-api-key,
#: api-key, x-goog-api-key, Cookie, X-Auth-Token, Ocp-Apim-Subscription-Key, ...
_CREDENTIAL_NAME = re.compile(r"auth|key|token|secret|passw|credential|cookie|session|signature", re.IGNORECASE)


def credential_parts(value: str) -> List[str]:
    """A credential and the secrets inside it, each of which an upstream may echo alone: the token
    after a scheme (``Bearer T``), a Basic credential's ``user:password`` and password, each value
    of a ``name=value; ...`` list (a cookie)."""
    parts = [value]
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if token and re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", scheme):
        parts.append(token)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(token, validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                decoded = ""
            parts += [decoded, decoded.partition(":")[2]] if decoded else []
    if "=" in value:
        parts += [item.partition("=")[2].strip() for item in value.split(";")]
    return [p for p in parts if p]


#: The variables urllib's getproxies() reads a proxy from (it reads either case).
_PROXY_VARIABLES = ("https_proxy", "http_proxy", "all_proxy")


def proxy_credentials(environ: Dict[str, str]) -> List[str]:
    """The credentials in the proxy URLs of ``environ`` (``http://user:password@proxy:3128``): the
    password, ``user:password`` and the ``Proxy-Authorization`` value agproxy makes of them."""
    found: List[str] = []
    for name in _PROXY_VARIABLES:
        for value in (environ.get(name), environ.get(name.upper())):
            if not value:
                continue
            try:
                parts = urllib.parse.urlsplit(value if "://" in value else "http://" + value)
                user, password = parts.username, parts.password
            except ValueError:
                continue
            if user or password:
                pair = f"{urllib.parse.unquote(user or '')}:{urllib.parse.unquote(password or '')}"
                found += [urllib.parse.unquote(password or ""), pair,
                          base64.b64encode(pair.encode("utf-8")).decode("ascii")]
    return [f for f in found if f]


def upstream_credentials(headers: Dict[str, str], extra_body: Any, templated: Iterable[str]) -> Tuple[str, ...]:
    """The credentials an upstream's config holds beside its accounts: each header whose name says
    it is one (:data:`_CREDENTIAL_NAME`), whose value is shaped like a key, or whose value came from
    a ``${VAR}`` (``templated``: the names of those headers), and extra_body strings under a
    credential's name, with the secrets inside each (:func:`credential_parts`)."""
    templated = set(templated)
    found = [value for name, value in headers.items()
             if _CREDENTIAL_NAME.search(name) or name in templated or re.search(_KEY_SHAPES, value)]
    stack = [extra_body]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found += [v for k, v in item.items() if isinstance(v, str) and _CREDENTIAL_NAME.search(k)]
            stack += [v for v in item.values() if isinstance(v, (dict, list))]
        elif isinstance(item, list):
            stack += [v for v in item if isinstance(v, (dict, list))]
    return tuple(dict.fromkeys(part for value in found for part in credential_parts(value)))


def _parse_upstream(obj: Any, where: str, unexpanded: Any = None) -> Upstream:
    """One ``upstreams[]`` entry (``unexpanded``: the same before ``${VAR}`` expansion)."""
    fields = _Fields(obj, where, _UPSTREAM_KEYS)
    name = fields.text("name", required=True)
    if not name:
        raise ConfigError(f"{where}.name: must not be empty")
    kind = fields.choice("kind", UPSTREAM_KINDS, "")
    if kind == "demo":
        base_url = fields.text("base_url", "")
    else:
        base_url = _parse_base_url(fields.text("base_url", required=True), f"{where}.base_url")
    accounts = []
    raw_accounts = fields.get("accounts", list, [])
    for i, raw in enumerate(raw_accounts):
        account = _Fields(raw, f"{where}.accounts[{i}]", ("name", "api_key", "weight", "models", "max_concurrency"))
        accounts.append(Account(
            account.text("name", f"account-{i}"), account.secret("api_key"),
            weight=account.number("weight", _default(Account, "weight"), 0.001),
            models=account.strings("models") or _default(Account, "models"),
            max_concurrency=account.integer("max_concurrency", _default(Account, "max_concurrency"), 0),
        ))
    account_names = [a.name for a in accounts]
    for i, account_name in enumerate(account_names):
        if account_name in account_names[:i]:
            raise ConfigError(f"{where}.accounts[{i}].name: {account_name!r} is used twice")
    if not accounts:
        if kind != "demo":
            raise ConfigError(f"{where}.accounts: needs at least one account")
        accounts.append(Account("demo", ""))
    profile = fields.choice("profile", PROFILES, "anthropic")
    base_rules = PROFILE_DEFAULTS["openai"] if kind == "openai" else PROFILE_DEFAULTS[profile]
    context_window = fields.get("context_window", int, None)
    headers = fields.get("headers", dict, {})
    extra_body = fields.get("extra_body", dict, None)
    for key, value in headers.items():
        if not isinstance(value, str) or not _HEADER_NAME.fullmatch(key):
            raise ConfigError(f"{where}.headers.{key}: must be a header name with a string value")
        if not _HEADER_TEXT.fullmatch(value):
            raise ConfigError(f"{where}.headers.{key}: must be printable ASCII without line breaks or other "
                              "control characters")
        if key.lower() in _FRAMING_HEADERS:
            raise ConfigError(f"{where}.headers.{key}: is set by agproxy itself (it frames the request)")
    if context_window is not None and context_window < 1024:
        raise ConfigError(f"{where}.context_window: must be at least 1024, got {_shown(context_window)}")
    if context_window is not None and context_window > MAX_CONTEXT_WINDOW:
        raise ConfigError(f"{where}.context_window: must be at most {MAX_CONTEXT_WINDOW}, got {_shown(context_window)}")
    return Upstream(
        name=name,
        kind=kind,
        base_url=base_url,
        accounts=tuple(accounts),
        timeout_s=fields.number("timeout_s", _default(Upstream, "timeout_s"), 0.001),
        connect_timeout_s=fields.number("connect_timeout_s", _default(Upstream, "connect_timeout_s"), 0.001),
        profile=profile,
        rules=_parse_rules(fields.get("sanitize", dict, {}), f"{where}.sanitize", base_rules),
        context_window=context_window,
        openai=_parse_openai(fields.get("openai", dict, {}), f"{where}.openai"),
        extra_body=extra_body,
        headers=tuple(headers.items()),
        credentials=upstream_credentials(headers, extra_body, [
            name for name, value in ((unexpanded or {}).get("headers") or {}).items()
            if isinstance(value, str) and "${" in value]),
    )


def _parse_openai(obj: Dict[str, Any], where: str) -> OpenAIOptions:
    fields = _Fields(obj, where, [f.name for f in dataclasses.fields(OpenAIOptions)])
    defaults = OpenAIOptions()
    tokenize = fields.text("tokenize", None)
    if tokenize is not None and tokenize not in TOKENIZE_STYLES:
        raise ConfigError(f"{where}.tokenize: must be one of {', '.join(TOKENIZE_STYLES)}")
    return OpenAIOptions(
        max_tokens_field=fields.choice("max_tokens_field", ("max_tokens", "max_completion_tokens"), "max_tokens"),
        reasoning_effort=fields.get("reasoning_effort", bool, defaults.reasoning_effort),
        thinking_body=fields.get("thinking_body", dict, None),
        reasoning_history=fields.get("reasoning_history", bool, defaults.reasoning_history),
        top_k=fields.get("top_k", bool, defaults.top_k),
        stream_usage=fields.get("stream_usage", bool, defaults.stream_usage),
        tokenize=tokenize,
        clean_schemas=fields.get("clean_schemas", bool, defaults.clean_schemas),
    )


def _parse_rules(obj: Dict[str, Any], where: str, base: Profile) -> Profile:
    """A profile's defaults with the per-key overrides of ``upstreams[].sanitize``."""
    fields = _Fields(obj, where, [f.name for f in dataclasses.fields(Profile)])
    overrides: Dict[str, Any] = {}
    for key in ("cache_control", "betas", "server_tools", "merge_roles", "billing_header"):
        if key in obj:
            overrides[key] = fields.get(key, bool, None)
    for key in ("fields", "tool_fields"):
        if key in obj:
            overrides[key] = None if obj[key] is None else frozenset(fields.strings(key))
    if "system_messages" in obj:
        overrides["system_messages"] = fields.choice("system_messages", SYSTEM_MESSAGE_MODES, "keep")
    if "thinking" in obj:
        overrides["thinking"] = fields.choice("thinking", THINKING_MODES, "keep")
    return dataclasses.replace(base, **overrides)


class _UnsetAsPlaceholder(dict):
    """The environment as the config's ``${VAR}``s see it, with a stand-in for every variable it
    lacks (for ``agproxy state``, which needs the config's state file, not its keys). Only the
    expansion reads it: where agproxy reads the environment itself (``XDG_STATE_HOME``), the
    real one is read."""

    def get(self, key: str, default: Any = None) -> Any:  # noqa: D102 (dict's own)
        return super().get(key, "http://unset.invalid")


def config_from_dict(raw: Any, environ: Dict[str, str], source: str, unset_as_placeholder: bool = False) -> Config:
    """Validate a parsed config file into a :class:`Config`; raises :class:`ConfigError`. With
    ``unset_as_placeholder``, the config's unset ``${VAR}``s become a stand-in, not an error."""
    unexpanded = raw.get("upstreams") if isinstance(raw, dict) else None
    raw = _expand_tree(raw, _UnsetAsPlaceholder(environ) if unset_as_placeholder else environ, "")
    fields = _Fields(raw, "", _CONFIG_KEYS)
    upstreams = tuple(
        _parse_upstream(obj, f"upstreams[{i}]", unexpanded[i] if isinstance(unexpanded[i], dict) else None)
        for i, obj in enumerate(fields.get("upstreams", list, []))
    )
    if not upstreams:
        raise ConfigError("upstreams: needs at least one upstream")
    names = [u.name for u in upstreams]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"upstreams[{i}].name: {name!r} is used twice")
    rules = []
    for i, obj in enumerate(fields.get("model_map", list, [])):
        rule = _Fields(obj, f"model_map[{i}]", ("match", "upstream", "model"))
        if "upstream" not in obj:
            raise ConfigError(f"model_map[{i}].upstream: is required")
        targets = [obj["upstream"]] if isinstance(obj["upstream"], str) else obj["upstream"]
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            raise ConfigError(f"model_map[{i}].upstream: must be an upstream name or a non-empty list of them")
        for target in targets:
            if target not in names:
                raise ConfigError(f"model_map[{i}].upstream: no upstream is named {target!r}")
        rules.append(ModelRule(rule.text("match", required=True), tuple(targets), rule.text("model")))
    api_key, admin_key = fields.secret("api_key"), fields.secret("admin_api_key")
    clients = _parse_clients(fields.get("clients", list, []), names, api_key, admin_key)
    d = Config()  # every default is written once, in the dataclass
    body_limit = fields.integer("max_body_bytes", d.max_body_bytes, 1024)
    inflight_limit = fields.integer("max_inflight_body_bytes", max(d.max_inflight_body_bytes, body_limit), 1024)
    if inflight_limit < body_limit:
        raise ConfigError(f"max_inflight_body_bytes: must be at least max_body_bytes ({body_limit}), "
                          f"got {inflight_limit}")
    return Config(
        host=fields.text("host", d.host),
        port=fields.integer("port", d.port, 0, 65535),
        auth_mode=fields.choice("auth_mode", AUTH_MODES, d.auth_mode),
        api_key=api_key,
        admin_api_key=admin_key,
        clients=clients,
        upstreams=upstreams,
        model_map=tuple(rules),
        max_retry_attempts=fields.integer("max_retry_attempts", d.max_retry_attempts, 1, 20),
        warmup_interception=fields.get("warmup_interception", bool, d.warmup_interception),
        force_stream_internally=fields.get("force_stream_internally", bool, d.force_stream_internally),
        ping_interval_s=fields.number("ping_interval_s", d.ping_interval_s, 0.05),
        max_body_bytes=body_limit,
        max_inflight_body_bytes=inflight_limit,
        max_header_bytes=fields.integer("max_header_bytes", d.max_header_bytes, 1024),
        header_timeout_s=fields.number("header_timeout_s", d.header_timeout_s, 0.01),
        body_timeout_s=fields.number("body_timeout_s", d.body_timeout_s, 0.01),
        idle_timeout_s=fields.number("idle_timeout_s", d.idle_timeout_s, 0.01),
        write_timeout_s=fields.number("write_timeout_s", d.write_timeout_s, 0.01),
        shutdown_grace_s=fields.number("shutdown_grace_s", d.shutdown_grace_s, 0),
        max_connections=fields.integer("max_connections", d.max_connections, 1),
        allowed_origins=fields.strings("allowed_origins"),
        server_names=fields.strings("server_names"),
        log_level=fields.choice("log_level", LOG_LEVELS, d.log_level),
        log_format=fields.choice("log_format", LOG_FORMATS, d.log_format),
        watch_config=fields.get("watch_config", bool, d.watch_config),
        state_file=fields.text("state_file", default_state_file(environ, source)),
        source=source,
    )


#: Settings that take effect only when agproxy starts listening (a reload keeps the running ones).
RESTART_SETTINGS = ("host", "port", "state_file", "log_format")


def config_changes(before: Config, after: Config) -> List[str]:
    """What a reload changes, in words for the log and ``POST /v1/agproxy/reload``: each top-level
    setting, each upstream added, removed or changed, each account added, removed, or given
    another key (never the key itself), and the model map. A host or port change needs a restart."""
    changes: List[str] = []
    for field in dataclasses.fields(Config):
        name = field.name
        if name in ("upstreams", "model_map", "source"):
            continue
        old, new = getattr(before, name), getattr(after, name)
        if old == new:
            continue
        if name in ("api_key", "admin_api_key"):
            changes.append(f"{name} changed")
        elif name == "clients":
            old_clients, new_clients = {c.name: c for c in old}, {c.name: c for c in new}
            changes += [f"client {n!r} removed" for n in sorted(old_clients.keys() - new_clients.keys())]
            changes += [f"client {n!r} added" for n in sorted(new_clients.keys() - old_clients.keys())]
            changes += [f"client {n!r} changed" + (" (a new key)" if old_clients[n].key_sha256 != c.key_sha256 else "")
                        for n, c in sorted(new_clients.items()) if n in old_clients and old_clients[n] != c]
        elif name in RESTART_SETTINGS:
            changes.append(f"{name}: {json.dumps(old)} -> {json.dumps(new)} needs a restart (until then agproxy "
                           f"keeps {json.dumps(old)})")
        else:
            changes.append(f"{name}: {json.dumps(old)} -> {json.dumps(new)}")
    old_upstreams = {u.name: u for u in before.upstreams}
    new_upstreams = {u.name: u for u in after.upstreams}
    for name in old_upstreams.keys() - new_upstreams.keys():
        changes.append(f"upstream {name!r} removed")
    for upstream in after.upstreams:
        old_upstream = old_upstreams.get(upstream.name)
        if old_upstream is None:
            changes.append(f"upstream {upstream.name!r} added ({len(upstream.accounts)} account(s))")
            continue
        settings = [f.name for f in dataclasses.fields(Upstream)
                    if f.name not in ("name", "accounts", "credentials", "extra_body", "headers")
                    and getattr(old_upstream, f.name) != getattr(upstream, f.name)]
        settings += [name for name in ("extra_body", "headers")  # they may hold credentials: named, never shown
                     if getattr(old_upstream, name) != getattr(upstream, name)]
        if settings:
            changes.append(f"upstream {upstream.name!r}: {', '.join(settings)} changed")
        old_accounts = {a.name: a for a in old_upstream.accounts}
        new_accounts = {a.name: a for a in upstream.accounts}
        for name in old_accounts.keys() - new_accounts.keys():
            changes.append(f"upstream {upstream.name!r}: account {name!r} removed")
        for account in upstream.accounts:
            old_account = old_accounts.get(account.name)
            if old_account is None:
                changes.append(f"upstream {upstream.name!r}: account {account.name!r} added")
            elif old_account.api_key != account.api_key:
                changes.append(f"upstream {upstream.name!r}: account {account.name!r} has a new key (it starts afresh)")
            elif old_account != account:
                changes.append(f"upstream {upstream.name!r}: account {account.name!r} changed")
    if before.model_map != after.model_map:
        changes.append(f"model_map changed ({len(after.model_map)} rule(s))")
    return sorted(changes, key=lambda line: "needs a restart" not in line)


#: The keys of a ``clients`` entry.
_CLIENT_KEYS = ("name", "api_key", "api_key_sha256", "models", "upstreams", "max_concurrency", "requests_per_minute",
                "tokens_per_day")
#: A client's name: it is shown in logs, metrics labels, the ledger and the page.
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+\-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _parse_clients(entries: List[Any], upstream_names: Sequence[str], api_key: str, admin_key: str
                   ) -> Tuple[Client, ...]:
    """``clients``: each entry checked; names and keys unique, and no client's key is agproxy's
    ``api_key`` or ``admin_api_key`` (a key is named by its client, never shown)."""
    clients: List[Client] = []
    owners: Dict[str, str] = {key_sha256(k): what for k, what in ((api_key, "api_key"), (admin_key, "admin_api_key"))
                              if k}
    for i, obj in enumerate(entries):
        where = f"clients[{i}]"
        entry = _Fields(obj, where, _CLIENT_KEYS)
        name = entry.text("name", required=True)
        if not _CLIENT_NAME.fullmatch(name):
            raise ConfigError(f"{where}.name: must be 1 to 64 letters, digits or . _ @ + - (it is shown in logs and "
                              f"metrics), got {_shown(name)}")
        if any(c.name == name for c in clients):
            raise ConfigError(f"{where}.name: {name!r} is used twice")
        plain, hashed = entry.secret("api_key"), entry.text("api_key_sha256", "")
        if bool(plain) == bool(hashed):
            raise ConfigError(f"{where}: give exactly one of api_key and api_key_sha256")
        if hashed and not _SHA256_HEX.fullmatch(hashed):
            raise ConfigError(f"{where}.api_key_sha256: must be 64 lowercase hex digits, as `printf %s KEY | "
                              "sha256sum` prints them")
        digest = hashed or key_sha256(plain)
        if digest in owners:
            raise ConfigError(f"{where}: its key is also {owners[digest]}'s; every key must be its own")
        owners[digest] = f"client {name!r}"
        allowed = entry.strings("upstreams")
        for target in allowed:
            if target not in upstream_names:
                raise ConfigError(f"{where}.upstreams: no upstream is named {_shown(target)}")
        models = entry.strings("models") if "models" in obj else ("*",)
        clients.append(Client(name, digest, plain, models or ("*",), allowed,
                              entry.integer("max_concurrency", 0, 0, 100000),
                              entry.integer("requests_per_minute", 0, 0, 10**9),
                              entry.integer("tokens_per_day", 0, 0, 10**15)))
    return tuple(clients)


def default_state_file(environ: Dict[str, str], config_path: str = "") -> str:
    """Where learned facts and cooldowns are kept: ``$XDG_STATE_HOME/agproxy/state.json``, or for
    a config file ``state-<mark of its path>.json`` there, so that two agproxy instances with
    different configs on one machine never share one."""
    base = environ.get("XDG_STATE_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"),
                                                         ".local", "state")
    if not config_path:
        return os.path.join(base, "agproxy", "state.json")
    mark = hashlib.sha256(os.path.abspath(config_path).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return os.path.join(base, "agproxy", f"state-{mark}.json")


def find_config_path(explicit: Optional[str], environ: Dict[str, str], cwd: str, home: str) -> Optional[str]:
    """The config file to use: ``--config``, ``$AGPROXY_CONFIG``, ``./agproxy.json``, the user's, or None."""
    if explicit:
        return explicit
    if environ.get("AGPROXY_CONFIG"):
        return environ["AGPROXY_CONFIG"]
    for candidate in (os.path.join(cwd, "agproxy.json"), os.path.join(home, ".config", "agproxy", "config.json")):
        if os.path.isfile(candidate):
            return candidate
    return None


#: A config file is a few kilobytes; past this it is not one (a reload must not read a device or a
#: runaway file into memory).
MAX_CONFIG_BYTES = 4 * 1024 * 1024


def read_config_file(path: str) -> bytes:
    """The bytes of a config file: a regular file (a FIFO would block, a device never end) of at
    most :data:`MAX_CONFIG_BYTES`, else :class:`ConfigError`; :class:`OSError` when it cannot be read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens at once, and is refused
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: is not a regular file")
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: is larger than {MAX_CONFIG_BYTES} bytes: not an agproxy config")
    return data


def load_config(
    explicit_path: Optional[str] = None,
    overrides: Optional[Dict[str, Any]] = None,
    environ: Optional[Dict[str, str]] = None,
    unset_as_placeholder: bool = False,
) -> Config:
    """Build the config from defaults, the file found by the lookup order, the environment and flags.

    With no file anywhere, the built-in demo config is used (the caller warns about it). With
    ``unset_as_placeholder``, unset ``${VAR}``s of the file become a stand-in (see
    :class:`_UnsetAsPlaceholder`).
    """
    environ = dict(os.environ) if environ is None else environ
    path = find_config_path(explicit_path, environ, os.getcwd(), os.path.expanduser("~"))
    if path is None:
        config = Config(upstreams=(DEMO_UPSTREAM,), state_file=default_state_file(environ))
    else:
        try:
            text = read_config_file(path).decode("utf-8-sig")
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: is not UTF-8 text") from None
        try:
            raw = json.loads(text)
            config = config_from_dict(raw, environ, path, unset_as_placeholder)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        except ValueError as exc:  # a number with thousands of digits, for one
            raise ConfigError(f"{path}: invalid JSON: {str(exc)[:200]}") from None
        except RecursionError:
            raise ConfigError(f"{path}: nested too deeply to be an agproxy config") from None
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if overrides:
        config = dataclasses.replace(config, **overrides)
        if not 0 <= config.port <= 65535:
            raise ConfigError(f"port: must be between 0 and 65535, got {config.port}")
    return config


# =====================================================================================
# 3. HTTP/1.1 wire
#    A sans-IO request parser (bytes in, events out) and response writers (values in, bytes
#    out). No asyncio, no clock, no logging; limits are passed in and enforced here.
# =====================================================================================

Headers = List[Tuple[str, str]]

#: Longest chunk-size line of a chunked body; real clients send a few hex digits.
_MAX_CHUNK_LINE = 1024
#: The longest request line we wait for before answering 414; Claude Code's are about 40 bytes.
_MAX_REQUEST_LINE = 8192

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([^\x00-\x20\x7f]+) HTTP/(\d)\.(\d)")
_FIELD_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
#: The usual chunk-size line: a size alone, ended by CRLF.
_CHUNK_HEAD = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")
#: A read's bytes from which :meth:`ChunkedReader.read_through` splits them (``whole_chunks``): about ten events of
#: 150 bytes, where its fixed cost (a split, a few lists) falls below the loop's per chunk (timeit).
_MANY_CHUNKS_BYTES = 1536
#: Chunk sizes alone, one a line: as many of the usual size lines as :meth:`ChunkedReader.whole_chunks` found.
_CHUNK_SIZES = re.compile(rb"(?:[0-9A-Fa-f]{1,16}\r\n)*")
#: A Content-Length: ASCII digits only (``"²".isdigit()`` is true), at most 18 of them.
_DIGITS = re.compile(r"[0-9]{1,18}")
_HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
     "trailer", "transfer-encoding", "upgrade")
)


def header_value(headers: Headers, name: str) -> Optional[str]:
    """The first value of header ``name`` (case-insensitive), or None."""
    name = name.lower()
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def header_values(headers: Headers, name: str) -> List[str]:
    """Every value of header ``name``, comma lists split, in order."""
    name = name.lower()
    out = []
    for key, value in headers:
        if key.lower() == name:
            out.extend(part.strip() for part in value.split(",") if part.strip())
    return out


def strip_hop_by_hop(headers: Headers) -> Headers:
    """Drop hop-by-hop headers, including those named in ``Connection``, before relaying."""
    named = {v.lower() for v in header_values(headers, "connection")}
    return [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP and k.lower() not in named]


@dataclasses.dataclass(eq=False)
class Request:
    """One HTTP request as parsed; ``body`` is None until the whole body has arrived."""

    method: str
    target: str
    version: Tuple[int, int]
    headers: Headers
    body: Optional[bytes] = None
    #: where each member's value of the JSON object ``body`` holds lies in its text, once it is parsed
    #: (:func:`parse_json_body`): a changed request is written again from the unchanged ones' text
    body_spans: Optional[Dict[str, Tuple[int, int]]] = None
    #: the first value of each header by its lower-cased name, made at the first :meth:`header`: a
    #: request's headers do not change once parsed, and its answer looks up about ten of them
    _first_values: Optional[Dict[str, str]] = dataclasses.field(default=None, repr=False)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (case-insensitive), or None: :func:`header_value`'s
        answer, each name lower-cased once per request rather than once per lookup."""
        values = self._first_values
        if values is None:
            values = self._first_values = {}
            for key, value in self.headers:
                values.setdefault(key.lower(), value)
        return values.get(name.lower())

    @property
    def keep_alive(self) -> bool:
        tokens = {v.lower() for v in header_values(self.headers, "connection")}
        if self.version >= (1, 1):
            return "close" not in tokens
        return "keep-alive" in tokens

    @property
    def expects_continue(self) -> bool:
        return self.version >= (1, 1) and (self.header("expect") or "").lower() == "100-continue"


class HeadReady:
    """Parser event: the request line and headers are complete; the body may still be coming
    (``has_body``: a non-zero Content-Length or a chunked body; ``length``: the Content-Length,
    0 for a chunked body)."""

    def __init__(self, request: Request, has_body: bool = False, length: int = 0) -> None:
        self.request = request
        self.has_body = has_body
        self.length = length


class RequestReady:
    """Parser event: the request, body included, is complete."""

    def __init__(self, request: Request) -> None:
        self.request = request


NEED_DATA = "NEED_DATA"
CLOSED = "CLOSED"
ParserEvent = Union[HeadReady, RequestReady, str]


def body_framing(version: Tuple[int, int], headers: Headers, error: Callable[..., AgproxyError],
                 what: str = "request") -> Tuple[str, int]:
    """How a message body is delimited (RFC 9112 section 6.3), for requests and responses alike:
    ("length", n), ("chunked", 0), or None for a response that ends with the close. Both
    ``Transfer-Encoding`` and ``Content-Length``, a transfer coding other than a lone ``chunked``,
    and conflicting or malformed lengths raise ``error``: they are the usual smuggling vectors."""
    codings: List[str] = []
    lengths: List[str] = []
    for name, value in headers:  # both in one pass over the head
        name = name.lower()
        if name == "content-length":
            lengths.append(value)
        elif name == "transfer-encoding":  # only SP and HTAB are blanks (str.strip takes Latin-1's U+0085, U+00A0)
            codings += [part.strip(" \t").lower() for part in value.split(",") if part.strip(" \t")]
    if codings:
        if lengths:
            raise error(f"{what} has both Transfer-Encoding and Content-Length")
        if version < (1, 1):
            raise error(f"Transfer-Encoding is not allowed in an HTTP/1.0 {what}")
        if codings != ["chunked"]:
            raise error(f"unsupported Transfer-Encoding {', '.join(codings)[:100]!r} in the {what}", status=501)
        return "chunked", 0
    if not lengths:
        return "length", 0
    values = {part.strip(" \t") for v in lengths for part in v.split(",")}
    if len(values) != 1:
        raise error(f"conflicting Content-Length headers in the {what}")
    value = values.pop()
    if not _DIGITS.fullmatch(value):
        raise error(f"invalid Content-Length {excerpt(value, 40)!r} in the {what}")
    return "length", int(value)


def request_body_framing(version: Tuple[int, int], headers: Headers) -> Tuple[str, int]:
    """How a request body is delimited: ("length", n) or ("chunked", 0); :class:`ProtocolError`
    for what :func:`body_framing` refuses."""
    return body_framing(version, headers, ProtocolError)


class _State:
    """A parser state: a named sentinel, compared by identity (a typo is a NameError, not a state)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_HEAD = _State("HEAD")  # waiting for a message head
_COUNTED = _State("COUNTED")  # a body of known length
_CHUNK_SIZE = _State("CHUNK_SIZE")  # a chunked body: the next chunk-size line
_CHUNK_DATA = _State("CHUNK_DATA")  # a chunk's bytes
_CHUNK_END = _State("CHUNK_END")  # the CRLF after a chunk
_TRAILERS = _State("TRAILERS")  # trailer lines after the last chunk
_CHUNKED = _State("CHUNKED")  # a chunked body, read by a ChunkedReader
_UNTIL_CLOSE = _State("UNTIL_CLOSE")  # a response body that ends with the connection
_DONE = _State("DONE")  # a response (or a chunked body) read to its end


class ChunkedReader:
    """One chunked body (RFC 9112 section 7.1), read out of a parser's buffer: the one chunked
    reader of both parsers. :meth:`read` returns the next piece of data, ``b""`` when it needs
    more input, or None once the last chunk and the trailers are through. Malformed framing is
    raised through ``error`` (a :class:`ProtocolError` for a request, an :class:`UpstreamFailure`
    for a response). A state switch, so longer than most functions."""

    def __init__(self, error: Callable[..., AgproxyError], max_trailer_bytes: int) -> None:
        self.error = error
        self.max_trailer_bytes = max_trailer_bytes
        self.state = _CHUNK_SIZE
        #: bytes of the current chunk not read yet (a parser checks its body limit with it)
        self.remaining = 0
        self._trailer_bytes = 0

    def read(self, buffer: bytearray) -> Optional[bytes]:
        """Consume what ``buffer`` holds of the body; see the class."""
        while True:
            state = self.state
            if state is _CHUNK_DATA:
                take = min(self.remaining, len(buffer))
                if not take:
                    return b""
                piece = bytes(buffer[:take])
                del buffer[:take]
                self.remaining -= take
                if not self.remaining:
                    self.state = _CHUNK_END
                return piece
            if state is _CHUNK_SIZE:
                line = self._take_line(buffer, _MAX_CHUNK_LINE, "chunk size line")
                if line is None:
                    return b""
                size_text = line.split(b";", 1)[0].strip(b" \t")
                if not _HEX.fullmatch(size_text):
                    raise self.error(f"invalid chunk size {excerpt(size_text.decode('latin-1'), 20)!r}")
                self.remaining = int(size_text, 16)
                self.state = _CHUNK_DATA if self.remaining else _TRAILERS
            elif state is _CHUNK_END:
                if buffer[:2] == b"\r\n" or buffer[:1] == b"\n":
                    del buffer[: 1 if buffer[:1] == b"\n" else 2]
                    self.state = _CHUNK_SIZE
                elif buffer in (b"", b"\r"):
                    return b""
                else:
                    raise self.error("chunk data is not followed by CRLF")
            elif state is _TRAILERS:
                line = self._take_line(buffer, self.max_trailer_bytes, "trailer")
                if line is None:
                    return b""
                self._trailer_bytes += len(line) + 2
                if self._trailer_bytes > self.max_trailer_bytes:
                    raise self.error(f"trailers exceed {self.max_trailer_bytes} bytes", status=431)
                if not line:
                    self.state = _DONE
            else:
                return None

    def read_through(self, buffer: bytearray) -> Optional[bytes]:
        """Everything ``buffer`` holds of the body, many chunks in one piece (an upstream sends an
        event a chunk): :meth:`read`'s answers joined, the usual whole chunks (``size CRLF data
        CRLF``) cut out of the buffer at once, with one delete: at the first size line, which
        follows the rest of the last read's chunk when a read began inside one (most reads do), and
        once a call (a run it ends, at an extension say, goes on chunk by chunk: no split per chunk)."""
        pieces: List[bytes] = []
        split = False  # whole_chunks has had this call's turn
        while True:
            if self.state is _CHUNK_END and buffer[:2] == b"\r\n":
                del buffer[:2]
                self.state = _CHUNK_SIZE
            if self.state is _CHUNK_SIZE and not split and len(buffer) >= _MANY_CHUNKS_BYTES:
                split = True
                pieces += self.whole_chunks(buffer)
            at = 0
            while self.state is _CHUNK_SIZE:
                head = _CHUNK_HEAD.match(buffer, at)
                if head is None:
                    break  # a chunk extension, blanks, no size at all, or a line not all here: :meth:`read` takes it
                data_at = head.end()
                size_at = data_at + int(head.group(1), 16)
                if size_at == data_at or not buffer.startswith(b"\r\n", size_at):
                    break  # the last chunk, or one not all here: :meth:`read` takes it
                pieces.append(buffer[data_at:size_at])
                at = size_at + 2
            if at:
                del buffer[:at]
                if not buffer:  # the read ended with a whole chunk, as most do: read() would say b""
                    return b"".join(pieces)
            piece = self.read(buffer)
            if not piece:
                return b"".join(pieces) if pieces else piece
            pieces.append(piece)

    def whole_chunks(self, buffer: bytearray) -> List[bytes]:
        """The data of the usual whole chunks (``size CRLF data CRLF``) at the start of ``buffer``,
        cut out of it (for a read of many events, :data:`_MANY_CHUNKS_BYTES`): the buffer split at
        every CRLF, and kept from its start as far as the pieces are a size (:data:`_CHUNK_SIZES`)
        and data of that length, in turn, with no call per chunk. Sizes that all agree are the one
        reading of the framing, whatever the data holds; a CRLF inside data, an extension, blanks or
        the last chunk end the run, and :meth:`read_through` reads on from there one chunk at a time."""
        parts = buffer.split(b"\r\n")
        count = (len(parts) - 1) // 2  # each size line and data with a CRLF after it
        size_texts = parts[0:2 * count:2]
        joined = b"\r\n".join(size_texts) + b"\r\n"  # (no piece holds a CRLF: one a line)
        valid = joined.count(b"\r\n", 0, _CHUNK_SIZES.match(joined).end())  # (a match, maybe empty, always)
        sizes = list(map(int, size_texts[:valid], [16] * valid))
        lengths = list(map(len, parts[1:2 * valid:2]))
        whole = valid
        if sizes != lengths or 0 in sizes:  # (all agree, nearly always: one comparison)
            agree = list(map(int.__eq__, sizes, lengths))
            if 0 in sizes:
                agree[sizes.index(0)] = False  # the last chunk: read() reads its trailers
            agree.append(False)
            whole = agree.index(False)
            if not whole:
                return []
        rest = parts[2 * whole:]  # what stays: the buffer less these and the CRLF after each of them
        del buffer[:len(buffer) - sum(map(len, rest)) - 2 * (len(rest) - 1)]
        return parts[1:2 * whole:2]

    def _take_line(self, buffer: bytearray, limit: int, what: str) -> Optional[bytes]:
        end = buffer.find(b"\n", 0, limit + 2)
        if end < 0:
            if len(buffer) > limit:
                raise self.error(f"{what} exceeds {limit} bytes")
            return None
        line = bytes(buffer[:end])
        del buffer[: end + 1]
        return line[:-1] if line.endswith(b"\r") else line


def _head_end(buffer: bytearray) -> int:
    """Where a message head ends (just past its blank line, CRLF or bare LF, whichever comes
    first: a body may hold the other kind), or -1. A bare LF's blank line is looked for only
    before the CRLF one, where there is one: the buffer may hold a big body after the head (a
    2 MB request's first read), which a second search to its end would scan for nothing."""
    crlf = buffer.find(b"\n\r\n")
    lf = buffer.find(b"\n\n", 0, crlf + 1) if crlf >= 0 else buffer.find(b"\n\n")
    if crlf >= 0 and lf < 0:
        return crlf + 3
    return lf + 2 if lf >= 0 else -1


class RequestParser:
    """Sans-IO HTTP/1.1 request parser.

    ``feed()`` bytes as they arrive (``b""`` for end of input), then call ``next_event()``
    until it returns ``NEED_DATA``: it yields ``HeadReady`` once the headers are complete (so the
    caller can refuse early or send ``100 Continue``), then ``RequestReady`` with the body, then the
    next pipelined request. It raises only :class:`ProtocolError` (or its 413/431 statuses).
    """

    def __init__(self, max_header_bytes: int = 65536, max_body_bytes: int = 33554432) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self._buffer = bytearray()
        self._eof = False
        self._request: Optional[Request] = None
        self._body = bytearray()
        self._state = _HEAD  # _HEAD -> _COUNTED | _CHUNKED -> _HEAD
        self._remaining = 0
        self._chunks: Optional[ChunkedReader] = None
        #: the request line and headers of the request being read, even one refused for its framing
        #: or size (a 413 still names its path: its error takes the shape of that path's client)
        self.last_head: Optional[Request] = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed (pipelined requests wait here)."""
        return len(self._buffer)

    @property
    def body_bytes(self) -> int:
        """Bytes of the current request's body received so far."""
        return len(self._body)

    @property
    def idle(self) -> bool:
        """True between requests with nothing of the next one received yet."""
        return self._state is _HEAD and not self._buffer.strip(b"\r\n")

    def feed(self, data: bytes) -> None:
        """Add received bytes; ``b""`` means the peer closed its side."""
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> ParserEvent:
        """The next complete thing in the input, or ``NEED_DATA`` / ``CLOSED``."""
        if self._state is not _HEAD:
            return self._parse_body()
        event = self._parse_head()
        if event is not None:
            return event
        if self._eof:
            if self._buffer.strip(b"\r\n"):
                raise ProtocolError("connection closed in the middle of a request header")
            return CLOSED
        return NEED_DATA

    def _parse_head(self) -> Optional[ParserEvent]:
        self.last_head = None  # a request before this one says nothing of it
        # RFC 9112 2.2: ignore empty lines before the request line.
        while self._buffer[:2] == b"\r\n" or self._buffer[:1] == b"\n":
            del self._buffer[: 2 if self._buffer[:1] == b"\r" else 1]
        cut = _head_end(self._buffer)
        if cut < 0:
            line_limit = min(_MAX_REQUEST_LINE, self.max_header_bytes)
            if len(self._buffer) > line_limit and self._buffer.find(b"\n") < 0:
                raise ProtocolError(f"request line exceeds {line_limit} bytes", status=414)
            if len(self._buffer) > self.max_header_bytes:
                raise ProtocolError(f"header block exceeds {self.max_header_bytes} bytes", status=431)
            return None
        head = bytes(self._buffer[:cut]).rstrip(b"\r\n") + b"\n"
        if len(head) > self.max_header_bytes:
            raise ProtocolError(f"header block exceeds {self.max_header_bytes} bytes", status=431)
        del self._buffer[:cut]
        request = self.last_head = _parse_request_head(head)
        kind, length = request_body_framing(request.version, request.headers)
        if kind == "length" and length > self.max_body_bytes:
            raise ProtocolError(
                f"request body of {length} bytes exceeds the limit of {self.max_body_bytes} bytes",
                status=413, error_type="request_too_large",
            )
        self._request = request
        self._body = bytearray()
        if kind == "chunked":
            self._state = _CHUNKED
            self._chunks = ChunkedReader(ProtocolError, self.max_header_bytes)
        else:
            self._state = _COUNTED
            self._remaining = length
        return HeadReady(request, kind == "chunked" or length > 0, length)

    def _parse_body(self) -> ParserEvent:
        if self._state is _COUNTED:
            take = min(self._remaining, len(self._buffer))
            if take:
                self._body += self._buffer[:take]
                del self._buffer[:take]
                self._remaining -= take
            return self._finish() if self._remaining == 0 else self._need_body_data()
        assert self._chunks is not None
        while True:
            piece = self._chunks.read(self._buffer)
            if piece is None:
                return self._finish()
            self._body += piece
            if len(self._body) + self._chunks.remaining > self.max_body_bytes:
                raise ProtocolError(f"request body exceeds the limit of {self.max_body_bytes} bytes",
                                    status=413, error_type="request_too_large")
            if not piece:
                return self._need_body_data()

    def _need_body_data(self) -> str:
        if self._eof:
            raise ProtocolError("connection closed before the request body was complete")
        return NEED_DATA

    def _finish(self) -> RequestReady:
        request = self._request
        assert request is not None
        request.body = bytes(self._body)
        self._request = None
        self._body = bytearray()
        self._state = _HEAD
        return RequestReady(request)


#: The header lines of a head when every one is of the usual kind: a token, a colon and a value of
#: visible characters (Latin-1 included), spaces and tabs, with CRLF between them.
_PLAIN_HEADER_LINES = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*"
                                 rb"(?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*)*")


def _plain_header_lines(head: bytes, start: int) -> Optional[Headers]:
    """The headers of ``head[start:]`` (a head's lines after its first, CRLF between them, none
    after the last) when all are of the plain kind (:data:`_PLAIN_HEADER_LINES`), read with one
    match and one split, each value without the blanks around it; None for any other head, which
    is read line by line (that reading words what is wrong, or mends it). A head carries ten to
    thirty headers: a call per line costs more than the rest of its reading."""
    if start >= len(head) or head[start - 2:start] != b"\r\n" or not _PLAIN_HEADER_LINES.fullmatch(head, start):
        return None
    return [(name, value.strip(" \t")) for name, _, value in
            (line.partition(":") for line in head[start:].decode("latin-1").split("\r\n"))]


def _request_header_lines(lines: List[bytes]) -> Headers:
    """A request's header lines read one by one: a ``ProtocolError`` for a folded line, a malformed
    one or a control character in a value."""
    headers: Headers = []
    for raw in lines:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            raise ProtocolError("obsolete header line folding is not accepted")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise ProtocolError(f"malformed header line {line[:80]!r}")
        value = value.strip(b" \t")
        if _FIELD_VALUE_BAD.search(value):
            raise ProtocolError(f"control character in header {name.decode('ascii')!r}")
        headers.append((name.decode("ascii"), value.decode("latin-1")))
    return headers


def _parse_request_head(head: bytes) -> Request:
    first_end = head.find(b"\n")
    request_line = head[:first_end].rstrip(b"\r")
    match = _REQUEST_LINE.fullmatch(request_line)
    if not match:
        raise ProtocolError(f"malformed request line {request_line[:80]!r}")
    method, target, major, minor = match.groups()
    version = (int(major), int(minor))
    if version not in ((1, 0), (1, 1)):
        raise ProtocolError(f"HTTP version {version[0]}.{version[1]} is not supported", status=505)
    headers = _plain_header_lines(head[:-1], first_end + 1)  # (the head ends with its last line's LF)
    if headers is None:
        headers = _request_header_lines(head.split(b"\n")[1:])
    target_text = target.decode("ascii", "replace")
    if not (target_text.startswith("/") or target_text == "*" or "://" in target_text):
        raise ProtocolError(f"malformed request target {target_text[:80]!r}")
    if "://" in target_text:  # absolute-form: keep the path, the Host header speaks for the authority
        try:
            parts = urllib.parse.urlsplit(target_text)
        except ValueError:
            raise ProtocolError(f"malformed request target {target_text[:80]!r}") from None
        target_text = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if version >= (1, 1) and sum(1 for k, _ in headers if k.lower() == "host") != 1:
        raise ProtocolError("an HTTP/1.1 request needs exactly one Host header")
    return Request(method.decode("ascii"), target_text, version, headers)


def _reason(status: int) -> str:
    """A status line's reason phrase (each looked up once: an enum's lookup costs a few microseconds)."""
    reason = _REASONS.get(status)
    if reason is None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        if 100 <= status <= 599:
            _REASONS[status] = reason
    return reason


_REASONS: Dict[int, str] = {529: "Overloaded"}


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(now: float) -> str:
    """An IMF-fixdate for the ``Date`` header (written once a second: every answer carries one)."""
    second = int(now)
    if _LAST_HTTP_DATE[0] != second:
        t = time.gmtime(second)
        _LAST_HTTP_DATE[:] = [second, f"{_WEEKDAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} "
                                      f"{t.tm_year} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"]
    return _LAST_HTTP_DATE[1]


#: The second :func:`http_date` wrote last, and what it wrote.
_LAST_HTTP_DATE: List[Any] = [None, ""]


_HEADER_VALUE_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def safe_header_value(value: str) -> str:
    """``value`` made safe to write in a header: control characters (CR, LF, NUL and the rest but
    tab) become a space, so no value can end its line or the head; characters outside ASCII are
    percent-encoded as UTF-8, so every value encodes (a model or account name in any script)."""
    value = _HEADER_VALUE_CONTROL.sub(" ", value)
    if value.isascii():
        return value
    return "".join(c if c.isascii() else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
                   for c in value)


def encode_head(start_line: str, headers: Headers) -> bytes:
    """A request or response head, ready to write: the one place a head is built, so every header
    value agproxy writes, to a client or an upstream, passes :func:`safe_header_value`; a header
    whose name is not a token (only a relayed one could be) is left out."""
    names = [name for name, _ in headers]
    if "" not in names and _HEADER_NAME.fullmatch("".join(names)) and _PLAIN_HEADER_VALUES.fullmatch(
            "".join(value for _, value in headers)):  # the usual head: checked at once, written as it is
        return ("\r\n".join([start_line] + [f"{name}: {value}" for name, value in headers]) + "\r\n\r\n").encode(
            "ascii")
    lines = [start_line]
    for name, value in headers:
        if _HEADER_NAME.fullmatch(name):
            lines.append(f"{name}: {safe_header_value(value)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


#: Header values that :func:`safe_header_value` leaves as they are, all together: printable ASCII and tabs.
_PLAIN_HEADER_VALUES = re.compile(r"[\t -~]*")


def response_head(status: int, headers: Headers) -> bytes:
    """The status line and header block of a response, ready to write."""
    return encode_head(f"HTTP/1.1 {status} {_reason(status)}", headers)


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked response body (never the last: see ``LAST_CHUNK``)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


@dataclasses.dataclass(eq=False)
class ResponseHead:
    """A response's status line and headers, as the response parser reads them."""

    status: int
    version: Tuple[int, int]
    headers: Headers

    @property
    def keep_alive(self) -> bool:
        tokens = {v.lower() for v in header_values(self.headers, "connection")}
        return "close" not in tokens if self.version >= (1, 1) else "keep-alive" in tokens


END = "END"
_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: .*)?")


def _upstream_framing_error(message: str, status: int = 502) -> AgproxyError:
    return UpstreamFailure(f"upstream sent a malformed answer: {message}")


def _response_header_lines(lines: List[bytes]) -> Headers:
    """An upstream's header lines read one by one, mended rather than refused: a line that is not
    a header is left out, and a bare CR or a NUL in a value becomes a space (RFC 9112 5)."""
    headers: Headers = []
    for raw in lines:
        name, sep, value = raw.rstrip(b"\r").partition(b":")
        name = name.strip()
        if sep and _TOKEN.fullmatch(name):
            headers.append((name.decode("ascii"), _FIELD_VALUE_BAD.sub(b" ", value.strip()).decode("latin-1")))
    return headers


class ResponseParser:
    """Sans-IO HTTP/1.1 response parser for the upstream side: ``feed()`` bytes (``feed(b"")``
    at end of input), then ``next_event()`` gives the ``ResponseHead``, body pieces as they arrive,
    then ``END`` (or ``NEED_DATA``). Interim 1xx responses are skipped. Raises only
    :class:`UpstreamFailure` on malformed or truncated input."""

    def __init__(self, method: str = "POST", max_header_bytes: int = 65536) -> None:
        self.method = method
        self.max_header_bytes = max_header_bytes
        self.head: Optional[ResponseHead] = None
        self._buffer = bytearray()
        self._eof = False
        self._state = _HEAD
        self._remaining = 0
        self._chunks: Optional[ChunkedReader] = None

    @property
    def reusable(self) -> bool:
        """The connection can carry another request: the body ended by its framing (not a close)
        and nothing came after it (bytes past the framing would answer the next request)."""
        return (self._state is _DONE and self.head is not None and self.head.keep_alive and self._framed
                and not self._buffer)

    def feed(self, data: bytes) -> None:
        if data:
            self._buffer += data
        else:
            self._eof = True

    @property
    def wants_data(self) -> bool:
        """Whether :meth:`next_event` can give only ``NEED_DATA`` until more is fed: a chunked body
        read up to its last byte with its end still to come (after a read, nearly always), known
        without a call through the chunk reader."""
        return not self._buffer and self._state is _CHUNKED and not self._eof \
            and self._chunks.state is not _DONE  # type: ignore[union-attr]

    def next_event(self) -> Union[ResponseHead, bytes, str]:
        while True:
            state = self._state
            if state is _HEAD:
                head = self._parse_head()
                if head is None:
                    return NEED_DATA
                if 100 <= head.status < 200 and head.status != 101:
                    continue  # interim answer such as 100 Continue
                self.head = head
                self._begin_body(head)
                return head
            if state is _DONE:
                return END
            if state is _COUNTED:
                if not self._remaining:
                    self._state = _DONE
                    continue
                if not self._buffer:
                    return self._need("the response body ended early")
                piece = bytes(self._buffer[: self._remaining])
                del self._buffer[: len(piece)]
                self._remaining -= len(piece)
                return piece
            if state is _UNTIL_CLOSE:
                if self._buffer:
                    piece = bytes(self._buffer)
                    self._buffer.clear()
                    return piece
                if self._eof:
                    self._state = _DONE
                    continue
                return NEED_DATA
            if state is _CHUNKED:
                assert self._chunks is not None
                piece = self._chunks.read_through(self._buffer)
                if piece is None:
                    self._state = _DONE
                    continue
                return piece or self._need("the chunked response ended early")
            raise AssertionError(state)

    def _need(self, what: str) -> str:
        if self._eof:
            raise UpstreamFailure(what)
        return NEED_DATA

    def _parse_head(self) -> Optional[ResponseHead]:
        end = _head_end(self._buffer)
        if end < 0:
            if len(self._buffer) > self.max_header_bytes:
                raise UpstreamFailure(f"upstream header block exceeds {self.max_header_bytes} bytes")
            if self._eof:
                if not self._buffer:
                    raise UpstreamClosed("upstream closed the connection without an answer")
                raise UpstreamFailure("upstream closed the connection in the middle of its headers")
            return None
        head = bytes(self._buffer[:end]).rstrip(b"\r\n")
        del self._buffer[:end]
        first_end = head.find(b"\n")
        status_line = (head if first_end < 0 else head[:first_end]).rstrip(b"\r")
        match = _STATUS_LINE.fullmatch(status_line)
        if not match:
            line = excerpt(status_line.decode("latin-1"), 80)
            raise UpstreamFailure(f"upstream sent a malformed status line {line!r}")
        status = int(match.group(3))
        if not 100 <= status <= 599 or status == 101:
            raise UpstreamFailure(f"upstream answered with status {match.group(3).decode()}, which is not a valid "
                                  "answer to this request")
        headers = _plain_header_lines(head, first_end + 1) if first_end >= 0 else []
        if headers is None:
            headers = _response_header_lines(head.split(b"\n")[1:])
        return ResponseHead(status, (int(match.group(1)), int(match.group(2))), headers)

    def _begin_body(self, head: ResponseHead) -> None:
        self._framed = True
        if self.method == "HEAD" or head.status in (204, 304):
            self._state = _DONE
            return
        kind, length = body_framing(head.version, head.headers, _upstream_framing_error, "response")
        if kind == "chunked":
            self._state = _CHUNKED
            self._chunks = ChunkedReader(_upstream_framing_error, self.max_header_bytes)
        elif header_value(head.headers, "content-length") is not None:
            self._remaining = length
            self._state = _COUNTED
        else:
            self._framed = False
            self._state = _UNTIL_CLOSE


# -- what a request presents, and what of an upstream's answer a client sees --------------------

def host_without_port(host: str) -> str:
    """The name part of a ``Host`` header value (only spaces and tabs pad it: Latin-1's U+0085 and
    U+00A0 are part of a name that then is no one's; an IPv6 literal is its brackets' inside only
    when nothing but a port follows them)."""
    host = host.strip(" \t")
    if host.startswith("["):
        bracketed = _BRACKETED_HOST.fullmatch(host)
        return bracketed.group(1) if bracketed else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


_BRACKETED_HOST = re.compile(r"\[([^\]]*)\](?::[0-9]*)?")


def presented_keys(request: Request) -> List[str]:
    """The keys a client sent: ``Authorization: Bearer``, ``x-api-key`` and ``x-goog-api-key``,
    and on Gemini's routes (``/v1beta/``) ``?key=``, as Gemini's clients may send it (the record
    keeps no query, so it is never logged)."""
    keys = []
    if request.query and dialect_of_path(request.path).name == "gemini":
        keys += [value.strip() for value in urllib.parse.parse_qs(request.query).get("key", [])[:1] if value.strip()]
    authorization = request.header("authorization") or ""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        keys.append(token.strip())
    for name in ("x-api-key", "x-goog-api-key"):
        value = request.header(name)
        if value:
            keys.append(value.strip())
    return keys


def key_matches(expected: str, keys: Sequence[str]) -> bool:
    """Constant-time check that one of ``keys`` is ``expected`` (never true for an empty key)."""
    if not expected:
        return False
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(key.encode("utf-8"), expected.encode("utf-8"))
    return matched


def is_json_content_type(value: Optional[str]) -> bool:
    """``application/json`` or any ``+json`` media type, parameters allowed."""
    media = (value or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


#: Upstream response headers worth passing on to the client (rate-limit state, the upstream's id).
_RELAYED_HEADER = re.compile(r"(?:anthropic-ratelimit|x-ratelimit)-[a-z-]{1,40}|retry-after", re.IGNORECASE)


def relayed_upstream_headers(headers: Headers) -> Headers:
    """The upstream headers a client should see; the upstream's request-id is renamed. A
    ``retry-after`` that is not plain seconds (``nan``, ``1e12``, a date) is left out: agproxy
    states its own, bounded one on the errors it answers with."""
    out = [(k, v) for k, v in strip_hop_by_hop(headers) if _RELAYED_HEADER.fullmatch(k)
           and not (k.lower() == "retry-after" and not re.fullmatch(r"[0-9]{1,4}", v.strip()))]
    upstream_id = header_value(headers, "request-id")
    if upstream_id:
        out.append(("upstream-request-id", upstream_id))
    return out


# =====================================================================================
# 4. SSE
#    Encoder and incremental decoder for text/event-stream (WHATWG rules). Sans-IO.
# =====================================================================================

#: Largest single SSE event we buffer; Anthropic events are small, a whole tool input fits easily.
MAX_SSE_EVENT_BYTES = 16 * 1024 * 1024


class SSEError(UpstreamFailure):
    """An event stream that cannot be decoded within limits (a 502, like any upstream garbage)."""


class SSEEvent(NamedTuple):
    """One dispatched server-sent event (a named tuple: a value, made at half a frozen dataclass's
    cost, one for each event read)."""

    event: str
    data: str
    id: Optional[str] = None


def encode_sse(event: Optional[str], data: str) -> bytes:
    """Encode one event; multi-line data becomes several ``data:`` lines."""
    if event is not None and ("\n" in event or "\r" in event):
        raise ValueError("an SSE event name cannot contain a line break")
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out = f"event: {event}\n" if event is not None else ""
    out += "".join(f"data: {line}\n" for line in lines)
    return (out + "\n").encode("utf-8", "replace")  # an upstream's lone surrogate becomes "?"


class _JSONWriter:
    """A ``json.JSONEncoder``'s ``encode`` with CPython's C encoder made once: ``encode`` makes one at
    every call, about two thirds of the cost of a small event's JSON (1.3 -> 0.4 us). It checks no
    circular references (what agproxy encodes was decoded from JSON or built from it, a tree);
    where there is no C encoder, the encoder's own ``encode``."""

    __slots__ = ("encode",)

    def __init__(self, encoder: json.JSONEncoder) -> None:
        make = getattr(json.encoder, "c_make_encoder", None)
        if make is None or encoder.indent is not None:
            self.encode: Callable[[Any], str] = encoder.encode
            return
        strings = json.encoder.encode_basestring_ascii if encoder.ensure_ascii else json.encoder.encode_basestring
        write = make(None, encoder.default, strings, None, encoder.key_separator, encoder.item_separator,
                     encoder.sort_keys, encoder.skipkeys, encoder.allow_nan)

        def encode(value: Any) -> str:
            return strings(value) if type(value) is str else "".join(write(value, 0))

        self.encode = encode


#: Compact JSON, non-ASCII as it is: how every event agproxy writes is encoded (one encoder, made
#: once: ``json.dumps`` with options makes one per call, a good part of an event's cost).
_COMPACT_JSON = _JSONWriter(json.JSONEncoder(separators=(",", ":"), ensure_ascii=False))


def encode_sse_json(event: str, payload: Dict[str, Any]) -> bytes:
    """Encode an Anthropic SSE event whose data is a JSON object: one ``data:`` line (JSON holds
    no raw line break), as :func:`encode_sse` would write it."""
    if "\n" in event or "\r" in event:
        raise ValueError("an SSE event name cannot contain a line break")
    return f"event: {event}\ndata: {_COMPACT_JSON.encode(payload)}\n\n".encode("utf-8", "replace")


#: JSON as ``json.dumps(value, ensure_ascii=False)`` writes it: how a request body agproxy changed is sent.
_UTF8_JSON = _JSONWriter(json.JSONEncoder(ensure_ascii=False))
#: How :data:`_COMPACT_JSON` writes a string (the C escaper its encoder uses, non-ASCII as it is).
_json_text = json.encoder.encode_basestring


#: The bytes of a relayed delta before its string, by (index, type, field), made once (a few kinds,
#: and the first blocks' indices: an answer with more blocks makes the later ones' each time).
_DELTA_HEADS: Dict[Tuple[int, str, str], bytes] = {}
_MAX_DELTA_HEADS = 64


def delta_event(index: int, kind: str, field: str, text: str, relayed: bool) -> Event:
    """A ``content_block_delta`` event of one string (``{"type": kind, field: text}``, as the
    translators write them). ``relayed``, it is kept as its bytes alone (see :class:`Event`), written
    from a template with only the string escaped: the very bytes :func:`encode_sse_json` writes, at
    a tenth of its cost (a translated stream is mostly these)."""
    if relayed:
        head = _DELTA_HEADS.get((index, kind, field))
        if head is None:
            head = (f'event: content_block_delta\ndata: {{"type":"content_block_delta","index":{index:d},'
                    f'"delta":{{"type":"{kind}","{field}":').encode("utf-8", "replace")
            if index < _MAX_DELTA_HEADS:
                _DELTA_HEADS[(index, kind, field)] = head
        return Event("content_block_delta", None, head + _json_text(text).encode("utf-8", "replace") + b"}}\n\n")
    return Event("content_block_delta", {"type": "content_block_delta", "index": index,
                                         "delta": {"type": kind, field: text}})


#: The delta types a read's run may join into one event (never a signature, which is whole).
_JOINED_DELTAS = frozenset(("text_delta", "thinking_delta", "input_json_delta"))


class DeltaRun:
    """A translator's deltas, joined while a read lasts: consecutive deltas to the same block of
    the same type become ONE event carrying their joined string (one event to encode, count and
    parse, not one per upstream chunk). A client sees the same text cut at other places, as
    Anthropic's own streams cut it anywhere; nothing waits for a later read, so no latency is
    added. A run ends at any other event (a block's start or stop, a signature, usage, the end)
    and at :meth:`end_read`, when the read's events go out.

    The run's first delta goes into the list as an event at once; what joins it is gathered and
    the event written anew, joined, when the run ends (so a read of one delta, a paced stream,
    costs what it did)."""

    __slots__ = ("_out", "_at", "_index", "_kind", "_field", "_texts", "_relayed")

    def __init__(self) -> None:
        self._out: Optional[List[Event]] = None  # the list the open run's event is in, if one is open
        self._at = -1
        self._index = -1
        self._kind = self._field = ""
        self._texts: List[str] = []
        self._relayed = False

    def add(self, out: List[Event], index: int, kind: str, field: str, text: str, relayed: bool) -> None:
        """Add a delta (as :func:`delta_event` takes it) to ``out``: joined to the run when it is the
        last event there and of the same block and type, else as an event of its own."""
        if out is self._out and self._at == len(out) - 1 and index == self._index and kind == self._kind:
            self._texts.append(text)
            return
        self.end_read()
        out.append(delta_event(index, kind, field, text, relayed))
        if kind in _JOINED_DELTAS:
            self._out, self._at, self._index, self._kind, self._field = out, len(out) - 1, index, kind, field
            self._texts, self._relayed = [text], relayed

    def end_read(self) -> None:
        """End the run: its event, if more joined it, written anew with the joined string."""
        out = self._out
        if out is not None:
            self._out = None
            if len(self._texts) > 1:
                out[self._at] = delta_event(self._index, self._kind, self._field, "".join(self._texts),
                                            self._relayed)
            self._texts = []


class Event:
    """One Anthropic stream event as the relay pipeline carries it: ``name`` (its type), ``data``
    (the decoded payload), and ``raw``, its SSE bytes exactly as they may go out (an upstream's own
    bytes relayed as they came), or None when it is to be encoded (:meth:`encoded`). Whatever
    changes ``data`` sets ``raw`` to None. Events are encoded once, at the edge of the relay.

    A relayed delta (the bulk of a stream) may be made without its data (``data=None``, with
    ``raw`` one ``data:`` line): it is decoded from ``raw`` only if something asks for it (the
    Message assembled for a JSON client), so a batch of hundreds of deltas in flight does not hold
    hundreds of decoded payloads."""

    __slots__ = ("name", "_data", "raw")

    def __init__(self, name: str, data: Optional[Dict[str, Any]], raw: Optional[bytes] = None) -> None:
        self.name = name
        self._data = data
        self.raw = raw

    @property
    def data(self) -> Dict[str, Any]:
        if self._data is None:
            assert self.raw is not None, "an event without data has its bytes"
            self._data = _decode_bounded(self.raw[self.raw.index(b"data:") + 5:].strip().decode("utf-8"),
                                         MAX_UPSTREAM_JSON_DEPTH)
        return self._data

    @data.setter
    def data(self, value: Dict[str, Any]) -> None:
        self._data = value

    def encoded(self) -> bytes:
        """The event's SSE bytes: as it came, else as :func:`encode_sse_json` writes it."""
        return self.raw if self.raw is not None else encode_sse_json(self.name, self.data)

    def __repr__(self) -> str:
        return f"Event({self.name!r}, {self.data!r}, raw={self.raw!r})"


#: The name of a :class:`RelayedDeltas`, the event that stands for a run of plain deltas of one block.
RELAYED_DELTAS = "agproxy.relayed_deltas"
#: The bytes of a plain delta after its string: its closing quote and braces, and the blank line.
_DELTA_END = b'"}}\n\n'
#: The delta type and field at the end of a run's head (the bytes before each of its strings).
_RUN_HEAD_KIND = re.compile(rb'"(text_delta|thinking_delta|input_json_delta)", ?"(text|thinking|partial_json)": ?"\Z')


class RelayedDeltas(Event):
    """A run of ``content_block_delta`` events of one block, each of one JSON string (text,
    thinking or a tool's JSON source) and each written with the same bytes before its string
    (``head_size`` of them), that :class:`EventStreamCheck` checked with one match and relays as
    one bytes object (``raw``, as they came) instead of an object per event. The Anthropic
    encoder sends it as it is; whatever reads the events' data takes them apart
    (:func:`single_events`). What the run says is read from its bytes: its ``count`` of events,
    the :attr:`chars` of its strings, and as its :attr:`data` the one delta it amounts to (for the
    Message assembled from a stream: the strings decoded at once, not an object per event)."""

    __slots__ = ("index", "head_size", "count")

    def __init__(self, raw: bytes, index: int, head_size: int) -> None:
        super().__init__(RELAYED_DELTAS, None, raw)
        self.index = index
        self.head_size = head_size
        #: three line breaks an event, one in its head and two at its end (a JSON string holds none),
        #: counted one by one: faster than counting the blank lines
        self.count = raw.count(b"\n") // 3

    @property
    def data(self) -> Dict[str, Any]:
        """The run as one ``content_block_delta``: its type, and its strings joined under its field.
        The strings, each a whole JSON string's body (no escape cut, no lone surrogate: the check
        makes no run of those), are joined as they came and decoded once."""
        if self._data is None:
            head = self.raw[:self.head_size]
            kind, field = _RUN_HEAD_KIND.search(head).groups()  # type: ignore[union-attr]
            strings = b"".join([event[self.head_size:-len(_DELTA_END) + 2]
                                for event in self.raw.split(b"\n\n")[:-1]])
            self._data = {"type": "content_block_delta", "index": self.index,
                          "delta": {"type": kind.decode(), field.decode(): json.loads(b'"' + strings + b'"')}}
        return self._data

    @property
    def chars(self) -> int:
        """The bytes of the run's JSON strings (as written: escapes count as they are spelled)."""
        return len(self.raw) - self.count * (self.head_size + len(_DELTA_END))

    def events(self) -> List[Event]:
        """The run's events, one ``content_block_delta`` each (its data decoded if asked for)."""
        return [Event("content_block_delta", None, event + b"\n\n") for event in self.raw.split(b"\n\n")[:-1]]

    def __repr__(self) -> str:
        return f"RelayedDeltas(index={self.index}, count={self.count}, raw={self.raw!r})"


def single_events(events: List[Event]) -> List[Event]:
    """``events`` with each :class:`RelayedDeltas` taken apart into its events, for what reads the events' data."""
    if not any(type(event) is RelayedDeltas for event in events):
        return events
    out: List[Event] = []
    for event in events:
        if type(event) is RelayedDeltas:
            out += event.events()
        else:
            out.append(event)
    return out


def encode_events(events: Iterable[Event]) -> bytes:
    """A batch of events as the client gets it (the one place the pipeline encodes)."""
    return b"".join([e.raw if e.raw is not None else encode_sse_json(e.name, e.data) for e in events])


#: The name of the event that carries, beside the internal events they were read as, an upstream's
#: own chunks to pass to a client of the same protocol (its data: ``{"chunks": [bytes, ...]}``, each
#: a chunk's JSON): only that client's encoder (:class:`NativeStreamEncoder`) writes them.
VERBATIM = "agproxy.verbatim"


def holds_content(events: Iterable[Event]) -> bool:
    """True when ``events`` hold one that is not a ping: pings keep a connection open but say
    nothing of the answer going on (nor do an upstream's own chunks, which the events beside them
    stand for). (A loop, not ``any`` over a generator: it is asked once per relayed batch, and its
    first event nearly always answers.)"""
    for event in events:
        if event.name != "ping" and event.name != VERBATIM:
            return True
    return False


class StreamEncoder:
    """Writes the internal Anthropic events of one answer as a client protocol's stream: each
    batch as it comes (:meth:`encode`), a keep-alive while the upstream is silent (:meth:`ping`;
    b"" where the protocol has none), and the end of a stream that broke after it began
    (:meth:`error`). This one is Anthropic's: the events as they are."""

    def encode(self, events: List[Event]) -> bytes:
        """A batch of events as the client gets it."""
        return encode_events(events)

    def encode_parts(self, events: List[Event]) -> Iterator[bytes]:
        """:meth:`encode`'s bytes in parts the shell writes one at a time, waiting for the client
        to take each: an encoder whose events repeat a long text (the Responses API's closing
        events) makes each repeat only when it is written, so a batch never holds them all."""
        return iter((self.encode(events),))

    def ping(self) -> bytes:
        """A keep-alive the client ignores."""
        return encode_sse_json("ping", {"type": "ping"})

    def error(self, error_type: str, message: str) -> bytes:
        """The last bytes of a stream that broke after it began (an Anthropic error type)."""
        return encode_sse_json("error", error_body(error_type, message))


#: Anthropic's encoder holds nothing: one serves every stream.
ANTHROPIC_ENCODER = StreamEncoder()


class SSEDecoder:
    """Incremental text/event-stream decoder: ``feed()`` bytes, get the completed events.

    Handles events split anywhere across reads, ``\\r\\n``/``\\n``/``\\r`` line endings, comments,
    multi-line data and a leading BOM. Raises only :class:`SSEError` (an event over the size limit).
    """

    def __init__(self, max_event_bytes: int = MAX_SSE_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._buffer = bytearray()
        self._skip_lf = False
        self._started = False
        self._event = ""
        self._data: List[str] = []
        self._data_size = 0
        self._id: Optional[str] = None
        self._last_id: Optional[str] = None

    @property
    def pending(self) -> bool:
        """Part of an event has been taken and waits for the rest."""
        return bool(self._buffer or self._data or self._event)

    def feed(self, data: bytes) -> List[SSEEvent]:
        """Add bytes; return the events they complete."""
        if self._skip_lf and data[:1] == b"\n":
            data = data[1:]
        self._skip_lf = False
        self._buffer += data
        self._begin()
        return self._take(len(data))

    def _begin(self) -> None:
        """At the stream's start: a BOM is dropped."""
        if not self._started and (len(self._buffer) >= 3 or not b"\xef\xbb\xbf".startswith(self._buffer)):
            self._started = True  # (at the first bytes that cannot begin a BOM: it is the stream's start alone)
            if self._buffer[:3] == b"\xef\xbb\xbf":
                del self._buffer[:3]

    def _take(self, new: int) -> List[SSEEvent]:
        """The events that the buffer completes, its last ``new`` bytes just added (at most)."""
        events: List[SSEEvent] = []
        buffer = self._buffer
        new = min(new, len(buffer))
        if buffer.find(b"\r", len(buffer) - new) < 0:  # (what an earlier feed left holds no CR)
            # the usual case: LF line endings only, split in one go; only the new bytes can hold
            # a new line end (a large event arriving in pieces costs linear time)
            end = buffer.rfind(b"\n", max(0, len(buffer) - new))
            if end >= 0:
                lines = bytes(buffer[:end]).decode("utf-8", "replace").split("\n")
                del buffer[: end + 1]
                for line in lines:  # the usual lines taken here (as :meth:`_line` would), the rest there
                    if line[:6] == "data: ":
                        self._data.append(line[6:])
                        self._data_size += len(line) - 5
                        if self._data_size > self.max_event_bytes:
                            raise SSEError(f"SSE event exceeds {self.max_event_bytes} bytes")
                    elif not line and self._data and self._id is None:  # the end of an event without an id
                        events.append(SSEEvent(self._event or "message", "\n".join(self._data), self._last_id))
                        self._event, self._data, self._data_size = "", [], 0
                    else:
                        self._line(line, events)
            if len(buffer) + self._data_size > self.max_event_bytes:
                raise SSEError(f"SSE event exceeds {self.max_event_bytes} bytes")
            return events
        start = 0
        while True:
            cr = buffer.find(b"\r", start)
            lf = buffer.find(b"\n", start)
            if cr < 0 and lf < 0:
                break
            if lf < 0 or (0 <= cr < lf):
                end = cr
                if cr + 1 < len(buffer):
                    nxt = cr + 2 if buffer[cr + 1 : cr + 2] == b"\n" else cr + 1
                else:
                    nxt = cr + 1
                    self._skip_lf = True
            else:
                end, nxt = lf, lf + 1
            self._line(bytes(buffer[start:end]).decode("utf-8", "replace"), events)
            start = nxt
        del buffer[:start]
        if len(buffer) + self._data_size > self.max_event_bytes:
            raise SSEError(f"SSE event exceeds {self.max_event_bytes} bytes")
        return events

    def feed_data(self, data: bytes) -> List[str]:
        """Add bytes; return the data of each event they complete (:meth:`feed`'s events'
        ``data``), for a reader of nothing else: an OpenAI or Gemini stream's events mean nothing
        by their names or ids. The usual read, whole events each one ``data: `` line with LF line
        endings, or CRLF ones (Gemini's), is cut into its events' data with one split
        (:func:`_data_lines`); any other goes through :meth:`feed`.

        A CRLF read is cut at its last blank line only when what is left after it holds no line
        end (the next event begun, as a read usually ends): the buffer then never holds a CR
        between reads, as :meth:`_take` expects, nor an event the general path would have given."""
        if self._skip_lf or self._data or self._event or self._id is not None:
            return [event.data for event in self.feed(data)]
        crlf = b"\r" in data
        blank = b"\r\n\r\n" if crlf else b"\n\n"
        buffer = self._buffer
        scanned = len(buffer) - len(blank) + 1  # the new bytes, and a blank line they may complete
        buffer += data
        if not self._started:
            self._begin()
            scanned = 0
        end = buffer.rfind(blank, max(0, scanned))
        rest = end + len(blank)
        if end >= 0 and (not crlf or buffer.find(b"\r", rest) < 0 and buffer.find(b"\n", rest) < 0):
            text = buffer[:end].decode("utf-8", "replace")
            line_end = "\r\n" if crlf else "\n"
            if len(text) <= self.max_event_bytes and len(buffer) - rest <= self.max_event_bytes \
                    and _data_lines(text, line_end):  # (events within the limit: none to refuse)
                del buffer[:rest]
                return text[6:].split(line_end + line_end + "data: ")
        return [event.data for event in self._take(len(data))]

    def _line(self, line: str, events: List[SSEEvent]) -> None:
        if not line:
            if self._data:
                self._last_id = self._id if self._id is not None else self._last_id
                events.append(SSEEvent(self._event or "message", "\n".join(self._data), self._last_id))
            self._event, self._data, self._data_size, self._id = "", [], 0, None
            return
        if line.startswith(":"):
            return
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
            self._data_size += len(value) + 1
            if self._data_size > self.max_event_bytes:
                raise SSEError(f"SSE event exceeds {self.max_event_bytes} bytes")
        elif name == "id" and "\x00" not in value:
            self._id = value


def _data_lines(text: str, line_end: str = "\n") -> bool:
    """Whether ``text`` (events cut at their blank lines, the last one's left off) is events of one
    ``data: `` line each, every line ended by ``line_end`` (LF, or CRLF; with LF, ``text`` holds no
    CR): it begins with one, and each of its line ends is in a blank line before another
    (``\\n\\ndata: `` holds two LFs, ``\\r\\n\\r\\ndata: `` two CRs and two LFs, and two of them
    cannot overlap)."""
    separators = text.count(line_end + line_end + "data: ")
    return text.startswith("data: ") and text.count("\n") == 2 * separators \
        and (line_end == "\n" or text.count("\r") == 2 * separators)


def sse_complete_prefix(data: Union[bytes, bytearray], start: int = 0) -> int:
    """Length of the prefix of ``data`` that ends on an SSE event boundary (a blank line), looking
    for one only from ``start`` on (a caller that appends to a buffer passes where the new bytes
    begin, less 3 for a separator cut in two, so a large event costs linear time); 0 when none."""
    best = 0
    for separator in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        at = data.rfind(separator, max(0, start))
        if at >= 0:
            best = max(best, at + len(separator))
    return best


# =====================================================================================
# 5. Anthropic requests
#    Strict JSON, validation of every field agproxy reads, token estimates, the demo's
#    answers, the sanitizer per profile, warmups and sessions. Pure: nothing here awaits or
#    touches sockets.
# =====================================================================================

#: Claude models as Claude Code 2.1.332 describes them in its built-in model catalogue: the id,
#: the name shown, the context window Claude Code assumes for it without a ``context-1m`` beta
#: (its auto-compaction is budgeted by this, so usage is scaled onto it), and whether /v1/models
#: lists it when no upstream lists models of its own (the current ones; Claude Code and the SDKs
#: warn about the others). Update it from the newest Claude Code when a model appears.
CLAUDE_MODELS = (
    ("claude-opus-5-5", "Claude Opus 5.5", 1_000_000, True),
    ("claude-sonnet-5-5", "Claude Sonnet 5.5", 1_000_000, True),
    ("claude-haiku-5-5", "Claude Haiku 5.5", 1_000_000, True),
    ("claude-opus-5", "Claude Opus 5", 1_000_000, True),
    ("claude-sonnet-5", "Claude Sonnet 5", 1_000_000, True),
    ("claude-opus-4-8", "Claude Opus 4.8", 1_000_000, True),
    ("claude-opus-4-7", "Claude Opus 4.7", 1_000_000, True),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6", 200_000, True),
    ("claude-haiku-4-5", "Claude Haiku 4.5", 200_000, True),
    ("claude-opus-4-6", "Claude Opus 4.6", 200_000, False),
    ("claude-opus-4-5", "Claude Opus 4.5", 200_000, False),
    ("claude-sonnet-4-5", "Claude Sonnet 4.5", 200_000, False),
    ("claude-opus-4-1", "Claude Opus 4.1", 200_000, False),
    ("claude-opus-4", "Claude Opus 4", 200_000, False),
    ("claude-sonnet-4", "Claude Sonnet 4", 200_000, False),
    ("claude-fable-5", "Claude Fable 5", 1_000_000, False),
    ("claude-mythos-5", "Claude Mythos 5", 1_000_000, False),
)
#: The models /v1/models lists when nothing else names any.
KNOWN_CLAUDE_MODELS = tuple((model, name) for model, name, _, listed in CLAUDE_MODELS if listed)
_MODELS_CREATED_AT = "2025-01-01T00:00:00Z"
_MODELS_CREATED = 1735689600  # the same moment, as the Unix time OpenAI-shaped lists give


def _model_object(model_id: str, display_name: str, created_at: Optional[str] = None) -> Dict[str, Any]:
    """One entry of the Anthropic models list."""
    return {"type": "model", "id": model_id, "display_name": display_name,
            "created_at": created_at or _MODELS_CREATED_AT}


def models_list(models: List[Dict[str, Any]], shape: str) -> Dict[str, Any]:
    """A list of Anthropic model objects as a client reads it: ``anthropic`` (Anthropic's list),
    ``openai`` (OpenAI's) or ``both`` (Anthropic's list whose entries carry OpenAI's fields too,
    for a client that said neither: an OpenAI SDK and a plain curl read it alike)."""
    if shape == "openai":
        return {"object": "list", "data": [{"id": m["id"], "object": "model", "created": _MODELS_CREATED,
                                            "owned_by": "agproxy"} for m in models]}
    data = models if shape == "anthropic" else [dict(m, object="model", created=_MODELS_CREATED, owned_by="agproxy")
                                                for m in models]
    listed = {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
              "last_id": data[-1]["id"] if data else None}
    return listed if shape == "anthropic" else dict(listed, object="list")


#: Deepest nesting taken in what an upstream sends (Claude Code's deepest, an MCP tool's schema,
#: is about 15; a tool input 60 deep is rare but legitimate): deeper, it is garbage (a 502, tried
#: on another account) before a recursive walk (a copy, a translator) could run out of stack.
MAX_UPSTREAM_JSON_DEPTH = 80
#: Deepest nesting taken in a request: what an upstream may send plus the 5 levels a request puts
#: around a tool input it sends back (body, messages, a message, its content, the block), so that
#: a session's next turn is never refused for what an answer held; past this, recursive clean-up
#: and translation would run out of stack.
MAX_JSON_DEPTH = MAX_UPSTREAM_JSON_DEPTH + 5
#: Largest max_tokens taken: ten times what the largest model writes today (Claude Code asks 128000).
MAX_OUTPUT_TOKENS = 1_280_000
#: Longest model name taken; it is echoed in ``X-Mapped-Model`` (real ids are under 100).
MAX_MODEL_CHARS = 256
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_TOOL_CHOICES = ("auto", "any", "tool", "none")
_THINKING_TYPES = ("enabled", "disabled", "adaptive")


class JSONTooDeep(ValueError):
    """JSON nested deeper than Python's parser can follow."""


class RepeatedMember(ValueError):
    """A request body's top-level object that gives one member twice. JSON allows it and parsers
    differ on which saying counts (Python's and most keep the last, some the first): agproxy
    validates one reading and, when nothing needs changing, sends the client's own bytes, so an
    upstream that kept the other would serve a model or a ``max_tokens`` that a client's limits
    never saw. ``key``: the member."""

    def __init__(self, key: str) -> None:
        super().__init__(f"member {key[:80]!r} is given twice")
        self.key = key


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_STRICT_JSON = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
#: The bytes JSON takes for whitespace between its tokens.
_JSON_SPACE_BYTES = b" \t\n\r"
_scan_json_string = json.decoder.scanstring
_HIGH_SURROGATE = r"\\u[dD][89abAB][0-9a-fA-F]{2}"
_LOW_SURROGATE = r"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
#: An unpaired surrogate escape (after an even run of backslashes, so it is an escape).
_LONE_SURROGATE = (r"(?<!\\)((?:\\\\)*)(?:" + _HIGH_SURROGATE + "(?!" + _LOW_SURROGATE + ")|(?<!"
                   + _HIGH_SURROGATE + ")" + _LOW_SURROGATE + ")")
_LONE_SURROGATE_TEXT = re.compile(_LONE_SURROGATE)
_LONE_SURROGATE_BYTES = re.compile(_LONE_SURROGATE.encode())
#: Past this length a decoded text's depth is walked without counting its brackets first: a big
#: request always has more brackets than the limit, and the walk of its containers (about 0.7 ms
#: for a 2 MB Claude Code body) costs less than the count (about 2 ms).
_WALK_UNCOUNTED_CHARS = 64 * 1024


def _scan_object(text: str, spans: Dict[str, Tuple[int, int]]) -> Optional[Dict[str, Any]]:
    """``text`` decoded as one JSON object by the strict decoder, one member at a time, noting in
    ``spans`` where each member's value lies in ``text``; :class:`RepeatedMember` for a key given
    twice; None where it is not a plain object with whitespace at most around it, or a member's
    value is not JSON (the caller decodes it the usual way, for the error's words)."""
    skip = _JSON_SPACE.match
    i = skip(text, 0).end()
    if not text.startswith("{", i):
        return None
    value: Dict[str, Any] = {}
    repeated: Set[str] = set()
    i = skip(text, i + 1).end()
    while not text.startswith("}", i) or value:
        if not text.startswith('"', i):
            return None
        key, i = _scan_json_string(text, i + 1, True)
        i = skip(text, i).end()
        if not text.startswith(":", i):
            return None
        i = skip(text, i + 1).end()
        if key in value:
            repeated.add(key)
        try:
            value[key], end = _STRICT_JSON.scan_once(text, i)
        except StopIteration:
            return None
        spans[key] = (i, end)
        i = skip(text, end).end()
        if text.startswith("}", i):
            break
        if not text.startswith(",", i):
            return None
        i = skip(text, i + 1).end()
    if skip(text, i + 1).end() != len(text):
        return None
    if repeated:  # (once the whole is read: what else is wrong with it is said first, as by the whole parse)
        raise RepeatedMember(next(key for key in value if key in repeated))
    return value


def _decode_bounded(text: str, max_depth: int, spans: Optional[Dict[str, Tuple[int, int]]] = None,
                    unique: bool = False) -> Any:
    """``text`` decoded by the strict decoder, refused (:class:`JSONTooDeep`) when it nests deeper
    than ``max_depth``. The depth is walked only when the text has that many brackets at all: a
    short text costs nothing more, a longer one two counts of characters; a long one (a request)
    always has that many, so its containers are walked without counting. Given ``spans``, an
    object's members are decoded one by one and their places noted there (:func:`_scan_object`),
    and a member given twice is refused (:class:`RepeatedMember`); with ``unique``, so it is
    without ``spans`` (:data:`_MEMBERS_ONCE`)."""
    decoder = _STRICT_JSON
    if unique:
        decoder = _MEMBERS_ONCE
        _REPEATS.objects.clear()
    try:
        value = _scan_object(text, spans) if spans is not None else None
        if value is not None:
            end = len(text)
        else:
            if spans:
                spans.clear()
            try:  # the usual text, one value with nothing around it, in one call of the C scanner
                value, end = decoder.scan_once(text, 0)
            except StopIteration:
                end = -1
        if end != len(text):  # whitespace around it, or not JSON: decode() skips the one and words the other
            value = decoder.decode(text)
        if unique and _REPEATS.objects:
            _refuse_repeated_member(value)
    except ValueError:
        if spans:
            spans.clear()
        raise
    except RecursionError:
        raise JSONTooDeep("JSON nested too deeply") from None
    if len(text) <= 2 * max_depth:
        return value
    if (len(text) > _WALK_UNCOUNTED_CHARS or text.count("[") + text.count("{") > max_depth) \
            and _too_deep(value, max_depth):
        raise JSONTooDeep(f"JSON nested deeper than {max_depth} levels")
    return value


class _Repeats(threading.local):
    """The objects a decoding in this thread has found giving a member twice, each with its members
    as they came (:data:`_MEMBERS_ONCE`; a thread's own, as a decoding runs in one thread)."""

    def __init__(self) -> None:
        self.objects: List[Tuple[Dict[str, Any], List[Tuple[str, Any]]]] = []


_REPEATS = _Repeats()


def _note_repeats(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """An object's members as a dict, the object noted in :data:`_REPEATS` when it gives one twice."""
    value = dict(pairs)
    if len(value) != len(pairs):
        _REPEATS.objects.append((value, pairs))
    return value


def _refuse_repeated_member(value: Any) -> None:
    """:class:`RepeatedMember` where ``value``, just decoded by :data:`_MEMBERS_ONCE`, is an object
    that gives a member twice (the last object noted is the top-level one, if that is an object);
    the notes are let go either way."""
    top, members = _REPEATS.objects[-1]
    _REPEATS.objects.clear()
    if top is value:  # the first key given twice, in the order the keys first came (as _scan_object names it)
        counts = collections.Counter(key for key, _ in members)
        raise RepeatedMember(next(key for key in value if counts[key] > 1))


#: The strict decoder that sees each object's members (:func:`_note_repeats`): a request body's
#: top-level object is refused for a repeat, the objects inside it are not (the last saying counts
#: there, as everywhere in a big body, whose top level :func:`_scan_object` reads).
_MEMBERS_ONCE = json.JSONDecoder(object_pairs_hook=_note_repeats, parse_constant=_no_constant,
                                 parse_float=_finite_float)


def loads_strict(data: Union[bytes, str], repair_surrogates: bool = True,
                 max_depth: int = MAX_UPSTREAM_JSON_DEPTH, spans: Optional[Dict[str, Tuple[int, int]]] = None,
                 unique: bool = False) -> Any:
    """``json.loads`` that refuses what is not JSON although Python takes it: ``NaN``,
    ``Infinity``, numbers too large for a float or with more digits than ``int()`` takes, nesting
    deeper than ``max_depth`` (:class:`JSONTooDeep`). Raises ``ValueError``
    (``UnicodeDecodeError`` for bytes that are not UTF-8 is one). Everything an upstream sends is
    read with it; an unpaired surrogate escape in it becomes U+FFFD, so that what agproxy passes
    on is valid Unicode. ``spans`` and ``unique``: see :func:`_decode_bounded`."""
    if repair_surrogates and ("\\u" in data if isinstance(data, str) else b"\\u" in data):
        if isinstance(data, str):
            data = _LONE_SURROGATE_TEXT.sub(r"\1\\ufffd", data)
        else:
            data = _LONE_SURROGATE_BYTES.sub(rb"\1\\ufffd", data)
    if isinstance(data, str):
        return _decode_bounded(data, max_depth, spans, unique)
    text = data.decode("utf-8")
    value = _decode_bounded(text, max_depth, spans, unique)
    if spans and len(text) != len(data):  # not all ASCII: the places are noted in the bytes
        _spans_in_bytes(text, len(data), spans)
    return value


def _spans_in_bytes(text: str, size: int, spans: Dict[str, Tuple[int, int]]) -> None:
    """``spans``, places in ``text``, made places in its UTF-8 encoding (``size`` bytes), in place:
    the stretches between them are encoded one after the other, from either end of the text up to
    the longest stretch (a big body's messages), which is never encoded."""
    marks = sorted({0, len(text)}.union(*spans.values()))
    longest = max(range(len(marks) - 1), key=lambda k: marks[k + 1] - marks[k])
    byte_of = {0: 0, len(text): size}
    at = 0
    for k in range(1, longest + 1):
        at += len(text[marks[k - 1]:marks[k]].encode("utf-8"))
        byte_of[marks[k]] = at
    at = size
    for k in range(len(marks) - 2, longest, -1):
        at -= len(text[marks[k]:marks[k + 1]].encode("utf-8"))
        byte_of[marks[k]] = at
    for key, (start, end) in spans.items():
        spans[key] = (byte_of[start], byte_of[end])


def loads_each(texts: List[str], max_depth: int = MAX_UPSTREAM_JSON_DEPTH) -> List[Any]:
    """Each of ``texts`` (an upstream read's chunks) decoded as :func:`loads_strict` decodes it,
    where that is the usual chunk: one JSON value with nothing around it, no ``\\u`` escape, and
    short or shallow (a text longer than twice ``max_depth`` counts its brackets, alone: a read's
    chunks together have too many as soon as it holds a dozen): one call of the C scanner each,
    the escape check made once for the whole read where it can be. None for any other text: the
    caller decodes it with :func:`loads_strict`, which repairs it, refuses it or words what is
    wrong (and gives None again for ``null``)."""
    escaped = "\\u" in "".join(texts)
    scan = _STRICT_JSON.scan_once
    values: List[Any] = []
    for text in texts:
        if (escaped and "\\u" in text) or (len(text) > 2 * max_depth
                                            and text.count("[") + text.count("{") > max_depth):
            values.append(None)
            continue
        try:
            value, end = scan(text, 0)
        except (StopIteration, ValueError):
            value, end = None, -1
        values.append(value if end == len(text) else None)
    return values


def _too_deep(value: Any, limit: int) -> bool:
    """Whether objects and lists nest deeper than ``limit`` (iterative, one level of containers at a
    time: no recursion to overflow, and no depth kept per item)."""
    level = [value] if isinstance(value, (dict, list)) else []
    for _ in range(limit):
        if not level:
            return False
        level = [child for item in level for child in (item.values() if type(item) is dict else item)
                 if isinstance(child, (dict, list))]
    return bool(level)


def parse_json_body(body: bytes, spans: Optional[Dict[str, Tuple[int, int]]] = None) -> Dict[str, Any]:
    """The request body as a JSON object, or an :class:`InvalidRequest` saying what is wrong:
    not JSON (``NaN`` and out-of-range numbers included), nested deeper than
    :data:`MAX_JSON_DEPTH`, a string with an unpaired surrogate (it cannot be sent on as UTF-8),
    or a top-level object that gives one of its members twice (:class:`RepeatedMember`: the body may go
    upstream as the client's bytes, which must mean there what agproxy read).
    ``spans`` (a dict) gets where each member's value lies in the body's bytes (:func:`spliced_json`)."""
    if not body:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        value = loads_strict(body, repair_surrogates=False, max_depth=MAX_JSON_DEPTH, spans=spans, unique=True)
    except JSONTooDeep:
        raise InvalidRequest(f"request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except RepeatedMember as exc:
        raise InvalidRequest(f"request body gives {exc.key[:80]!r} twice; each member of the request "
                             f"object may be given once") from None
    except ValueError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"request body must be a JSON object, got {type(value).__name__}")
    if _SURROGATE_ESCAPE.search(body):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest("request body has a string with an unpaired UTF-16 surrogate (such as "
                                 "\\ud800); it is not valid Unicode") from None
    return value


def _expect(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise InvalidRequest(f"{where}: {what}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: Largest token count taken from an upstream (usage, a count, a window or a prompt size in its
#: words): a thousand times the largest window today. A larger one is garbage and read as absent:
#: it means nothing, and past 4300 digits ``int()`` and ``str()`` refuse it (a float overflows sooner).
MAX_UPSTREAM_TOKENS = 10**9


def merge_usage(total: Dict[str, Any], usage: Dict[str, Any]) -> None:
    """Take a later ``usage`` of one answer into ``total``. The input counts (``input_tokens``, and
    the cache's ``*_input_tokens``) are known from message_start and never shrink, so each keeps the
    largest seen: an upstream that says ``input_tokens: 0`` in its message_delta (meaning "none
    more") must not erase message_start's count, or a client's day budget would count none of its
    input. Anything else replaces what was there: message_delta's ``output_tokens`` is the final
    count, below message_start's placeholder when nothing was generated."""
    for key, value in usage.items():
        if key.endswith("input_tokens"):
            before = total.get(key)
            if type(value) is int and type(before) is int and before > value:  # (bool is not a count)
                continue
        total[key] = value


def upstream_count(value: Any) -> Optional[int]:
    """A token count an upstream reported: a whole number from 0 to :data:`MAX_UPSTREAM_TOKENS`
    (some compatible servers write ``5000.0``), else None (absent)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if _is_int(value) and 0 <= value <= MAX_UPSTREAM_TOKENS else None


def _block_problem(block: Any) -> Optional[Tuple[str, str]]:
    """What is wrong with one content block, as (the field's path under the block, what it must
    be), or None: the checks of :func:`_validate_blocks`, with no words made for a good block."""
    if not isinstance(block, dict):
        return "", "must be an object"
    kind = block.get("type")
    if not isinstance(kind, str):
        return ".type", "must be a string"
    if kind == "text":
        if not isinstance(block.get("text"), str):
            return ".text", "must be a string"
    elif kind in ("image", "document"):
        if not isinstance(block.get("source"), dict):
            return ".source", "must be an object"
    elif kind == "tool_use":
        for field in ("id", "name"):
            if not isinstance(block.get(field), str):
                return "." + field, "must be a string"
        if not isinstance(block.get("input", {}), dict):
            return ".input", "must be an object"
    elif kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            return ".tool_use_id", "must be a string"
    elif kind == "thinking":
        if not isinstance(block.get("thinking"), str):
            return ".thinking", "must be a string"
        if not isinstance(block.get("signature", ""), str):
            return ".signature", "must be a string"
    elif kind == "redacted_thinking":
        if not isinstance(block.get("data"), str):
            return ".data", "must be a string"
    return None


def _validate_blocks(blocks: Any, where: str, nested: bool = False) -> None:
    """Content blocks: each an object with a string ``type``; the fields agproxy reads or
    translates of the known types have the right types (:func:`_block_problem`; a field's path is
    worded only for the error). Unknown block types pass (newer API)."""
    _expect(isinstance(blocks, list), where, "must be a list of content blocks")
    for i, block in enumerate(blocks):
        problem = _block_problem(block)
        if problem is not None:
            raise InvalidRequest(f"{where}.{i}{problem[0]}: {problem[1]}")
        if block["type"] == "tool_result":
            content = block.get("content")
            if content is not None and not isinstance(content, str):
                _expect(not nested, f"{where}.{i}.content", "cannot hold another tool_result")
                _validate_blocks(content, f"{where}.{i}.content", nested=True)


def validate_messages_request(body: Dict[str, Any], *, count_tokens: bool = False) -> None:
    """Reject requests that no upstream could serve, with Anthropic's wording style: every field
    agproxy reads or translates must have its documented type, so that a bad request is a 400
    naming the field, never an error further in."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required" if model is None else "model: must be a non-empty string")
    _expect(len(model) <= MAX_MODEL_CHARS, "model", f"must be at most {MAX_MODEL_CHARS} characters")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("messages: Field required" if messages is None else "messages: must be a list")
    _expect(bool(messages), "messages", "at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages.{i}: must be an object")
        if message.get("role") not in ("user", "assistant", "system"):
            raise InvalidRequest(f"messages.{i}.role: must be 'user' or 'assistant'")
        content = message.get("content")
        if not isinstance(content, (str, list)):
            raise InvalidRequest(f"messages.{i}.content: must be a string or a list of content blocks")
        if isinstance(content, list):
            _validate_blocks(content, f"messages.{i}.content")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        _validate_blocks(system, "system")
    _validate_tools(body)
    if "thinking" in body and body["thinking"] is not None:
        thinking = body["thinking"]
        _expect(isinstance(thinking, dict), "thinking", "must be an object")
        _expect(thinking.get("type") in _THINKING_TYPES, "thinking.type",
                f"must be one of {', '.join(_THINKING_TYPES)}")
        if "budget_tokens" in thinking:
            _expect(_is_int(thinking["budget_tokens"]) and thinking["budget_tokens"] >= 0, "thinking.budget_tokens",
                    "must be a non-negative integer")
    metadata = body.get("metadata")
    if metadata is not None:
        _expect(isinstance(metadata, dict), "metadata", "must be an object")
        _expect(isinstance(metadata.get("user_id", ""), (str, type(None))), "metadata.user_id", "must be a string")
    max_tokens = body.get("max_tokens")
    if max_tokens is None and not count_tokens:  # a count takes the rest of a request, checked the same
        raise InvalidRequest("max_tokens: Field required")
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise InvalidRequest("max_tokens: must be a positive integer")
    _expect(max_tokens is None or max_tokens <= MAX_OUTPUT_TOKENS, "max_tokens",
            f"must be at most {MAX_OUTPUT_TOKENS} (no model writes more)")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("stream: must be true or false")
    stops = body.get("stop_sequences")
    if stops is not None:
        _expect(isinstance(stops, list) and all(isinstance(s, str) for s in stops), "stop_sequences",
                "must be a list of strings")
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            _expect(_is_number(body[key]), key, "must be a number")
    if body.get("top_k") is not None:
        _expect(_is_int(body["top_k"]), "top_k", "must be an integer")


def _tool_problem(tool: Any) -> Optional[Tuple[str, str]]:
    """What is wrong with one tool, as (the field's path under the tool, what it must be), or None:
    no words are made for a good tool (Claude Code sends a dozen or more with every request)."""
    if not isinstance(tool, dict):
        return "", "must be an object"
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        return ".name", "must be a non-empty string"
    kind = tool.get("type")
    if kind is not None and not isinstance(kind, str):
        return ".type", "must be a string"
    description = tool.get("description")
    if description is not None and not isinstance(description, str):
        return ".description", "must be a string"
    if kind in (None, "custom") and not isinstance(tool.get("input_schema", {}), dict):
        return ".input_schema", "must be an object"
    return None


def _validate_tools(body: Dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        _expect(isinstance(tools, list), "tools", "must be a list")
        for i, tool in enumerate(tools):
            problem = _tool_problem(tool)
            if problem is not None:
                raise InvalidRequest(f"tools.{i}{problem[0]}: {problem[1]}")
    choice = body.get("tool_choice")
    if choice is not None:
        _expect(isinstance(choice, dict), "tool_choice", "must be an object")
        _expect(choice.get("type") in _TOOL_CHOICES, "tool_choice.type", f"must be one of {', '.join(_TOOL_CHOICES)}")
        if choice["type"] == "tool":
            _expect(isinstance(choice.get("name"), str), "tool_choice.name", "must be a string")


_TOKEN_PIECES = re.compile(r"[A-Za-z]+|[0-9]{1,3}|[^\sA-Za-z0-9]+|\s+")


def estimate_text_tokens(text: str) -> int:
    """A tokenizer-free estimate of a text's token count, fitted to a Claude BPE vocabulary
    (bench/token_estimate.py): a Latin word up to 8 letters, a group of up to 3 digits, up to 3
    punctuation marks in a row, or a line break with its indentation is one token; any other
    character is one token. Typically within a few per cent, erring high."""
    count = 0
    for piece in _TOKEN_PIECES.findall(text):
        first = piece[0]
        if first.isascii() and first.isalpha():
            count += 1 + (len(piece) - 1) // 8
        elif first.isdigit():
            count += 1
        elif piece.isspace():
            count += 1 if ("\n" in piece or len(piece) > 1) else 0
        elif piece.isascii():
            count += 1 + (len(piece) - 1) // 3
        else:
            count += len(piece)
    return count


#: What an image or a binary document counts for in an estimate: a typical image's cost.
_MEDIA_TOKENS = 1500
#: Stands in for one in the stream of texts: counted as _MEDIA_TOKENS, not tokenized.
_MEDIA = object()


def _texts_of(value: Any) -> Iterable[Any]:
    """The texts of a tree of blocks, and :data:`_MEDIA` for each image or binary document."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _texts_of(item)
    elif isinstance(value, dict):
        source = value.get("source")
        if value.get("type") in ("image", "document") and isinstance(source, dict):
            text = source.get("data") if source.get("type") == "text" else None
            yield text if isinstance(text, str) else _MEDIA
            return
        for key, item in value.items():
            if key in ("cache_control", "signature", "type", "id", "tool_use_id"):
                continue
            if key == "input" and not isinstance(item, str):
                yield json.dumps(item)
            else:
                yield from _texts_of(item)


def estimate_input_tokens(body: Dict[str, Any]) -> int:
    """Estimated input tokens of a Messages request: system, messages and tools. Never 0."""
    def count(texts: Iterable[Any]) -> int:
        return sum(_MEDIA_TOKENS if t is _MEDIA else estimate_text_tokens(t) for t in texts)

    total = 3
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else message
        total += 4 + count(_texts_of(content))
    total += count(_texts_of(body.get("system")))
    for tool in body.get("tools") or []:
        total += 8 + estimate_text_tokens(json.dumps(tool, ensure_ascii=False))
    return max(1, total)


def new_message_id() -> str:
    """A fresh ``msg_`` id, for every Message agproxy builds: local ones and every translated
    answer. Never the upstream's: Ollama's ids repeat and some servers send one constant id, and
    Claude Code merges assistant turns that share an id (their tool results lost, an endless loop)."""
    return "msg_" + os.urandom(12).hex()


#: Longest upstream answer id passed on in ``X-Upstream-Message-Id`` (Chat Completions and Gemini
#: ids are under 60 characters; a longer one is cut, never relayed whole into a header).
MAX_UPSTREAM_ID_CHARS = 128
_NOT_ID_CHARACTER = re.compile(r"[^!-~]")


def upstream_answer_id(value: Any) -> Optional[str]:
    """The id an upstream gave its answer, fit to pass on in a header (printable ASCII without
    spaces), or None when it gave none. Not cut yet: the header cuts it to
    :data:`MAX_UPSTREAM_ID_CHARS` once the secrets in it are hidden (a cut first could leave the
    start of one that the redactor no longer knows)."""
    text = _NOT_ID_CHARACTER.sub("", value) if isinstance(value, str) else ""
    return text or None


def _tell_upstream_id(tell: Optional[Callable[[str], None]], value: Any) -> None:
    """Pass an upstream's id for its answer on to ``tell``, when there is one and someone to tell."""
    text = upstream_answer_id(value)
    if tell is not None and text:
        tell(text)


#: What Claude Code wraps its own context in, inside the user's turn (never what the user typed).
_SYSTEM_REMINDER = re.compile(r"<system-reminder>.*?(?:</system-reminder>|\Z)", re.DOTALL)


def _last_user_text(body: Dict[str, Any]) -> str:
    """The words of the user's last turn: its text, without the ``<system-reminder>`` blocks
    Claude Code adds to it."""
    for message in reversed(body.get("messages") or []):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        blocks = [content] if isinstance(content, str) else \
            [b.get("text") for b in content or [] if isinstance(b, dict) and b.get("type") == "text"]
        texts = [_SYSTEM_REMINDER.sub("", t).strip() for t in blocks if isinstance(t, str)]
        if any(texts):
            return "\n".join(t for t in texts if t)
    return ""


def demo_reply_text(body: Dict[str, Any]) -> str:
    """What the demo upstream says: an echo of the last user text, so a fresh install answers."""
    said = _last_user_text(body).strip()
    if len(said) > 400:
        said = said[:400] + "..."
    if not said:
        return "Hello from the agproxy demo upstream. Configure a real upstream to talk to a model."
    return (
        f"agproxy demo upstream: you said \"{said}\". "
        "This answer comes from the built-in demo; configure an upstream to reach a real model."
    )


def demo_message(body: Dict[str, Any], message_id: str, input_tokens: Optional[int] = None) -> Dict[str, Any]:
    """The demo upstream's non-streaming answer, a complete Anthropic Message."""
    text = demo_reply_text(body)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "demo"),
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": estimate_input_tokens(body) if input_tokens is None else input_tokens,
            "output_tokens": estimate_text_tokens(text),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


#: How much of its text the demo upstream streams in one delta (it looks like a model typing).
DEMO_PIECE_CHARS = 24


# -- the request sanitizer (profiles are defined with the config) --------------------------

#: Top-level fields never stripped on an upstream's say-so: without them the request means something else.
PROTECTED_TOP_FIELDS = frozenset(("model", "messages", "max_tokens", "stream", "system", "tools",
                                  "contents", "systemInstruction", "toolConfig", "generationConfig"))
#: Keys inside messages and tools that carry meaning; never stripped on an upstream's say-so.
PROTECTED_NESTED_KEYS = frozenset((
    "role", "content", "type", "text", "id", "name", "input", "tool_use_id", "input_schema", "source", "data",
    "media_type", "thinking", "signature", "url",
    # Gemini's (its requests are healed too)
    "parts", "functionCall", "functionResponse", "functionDeclarations", "parameters", "response", "args",
    "inlineData", "fileData", "mimeType", "thoughtSignature", "maxOutputTokens", "functionCallingConfig",
))
INTERRUPTED_TOOL_TEXT = "Tool call interrupted: no result was recorded for this call."
CONTINUATION_TEXT = "(conversation continues)"


def _block_list(content: Any) -> List[Any]:
    """Message content as a list of blocks (a string becomes one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return list(content) if isinstance(content, list) else []


def _block_text(block: Any) -> str:
    """The plain text a block or tool_result content carries (images and the like give none)."""
    if isinstance(block, str):
        return block
    if isinstance(block, list):
        return "\n".join(t for t in (_block_text(b) for b in block) if t)
    if isinstance(block, dict):
        if block.get("type") == "text":
            return str(block.get("text") or "")
        if block.get("type") == "tool_result":
            return _block_text(block.get("content"))
        if block.get("type") == "tool_use":
            return f"[tool call {block.get('id')} {block.get('name')}: {json.dumps(block.get('input'))}]"
    return ""


#: Prompt-cache breakpoints a request may hold (Anthropic refuses a fifth).
MAX_CACHE_BREAKPOINTS = 4


def mark_cache_breakpoints(body: Dict[str, Any]) -> None:
    """Mark, in a request a client dialect made, where Anthropic may cache the prompt: the last
    tool, the system prompt and the last message's last block (three of the four breakpoints it
    takes). Codex CLI resends some 60 KB of instructions and tools each turn; cached, an Anthropic
    upstream bills them at a tenth. A client of another protocol cannot mark them itself; an
    upstream that takes no marks has them removed by its profile, as for any request. Nothing is
    marked in a request that holds marks of its own."""
    def marked(value: Any) -> bool:
        if isinstance(value, dict):
            return "cache_control" in value or any(marked(v) for v in value.values())
        return isinstance(value, list) and any(marked(v) for v in value)

    if marked(body.get("tools")) or marked(body.get("system")) or marked(body.get("messages")):
        return
    mark = {"type": "ephemeral"}
    tools = body.get("tools")
    if isinstance(tools, list) and tools and isinstance(tools[-1], dict):
        tools[-1]["cache_control"] = dict(mark)
    system = body.get("system")
    if isinstance(system, str) and system:
        body["system"] = [{"type": "text", "text": system, "cache_control": dict(mark)}]
    elif isinstance(system, list) and system and isinstance(system[-1], dict):
        system[-1]["cache_control"] = dict(mark)
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        content = messages[-1].get("content")
        if isinstance(content, str) and content:
            messages[-1]["content"] = [{"type": "text", "text": content, "cache_control": dict(mark)}]
        elif isinstance(content, list) and content and isinstance(content[-1], dict) \
                and content[-1].get("type") not in ("thinking", "redacted_thinking"):
            content[-1]["cache_control"] = dict(mark)


def _strip_cache_control(value: Any, changes: Dict[str, int]) -> None:
    """Remove every ``cache_control`` key in a tree of blocks."""
    if isinstance(value, dict):
        if value.pop("cache_control", None) is not None:
            changes["cache_control"] = changes.get("cache_control", 0) + 1
        for item in value.values():
            if isinstance(item, (dict, list)):
                _strip_cache_control(item, changes)
    elif isinstance(value, list):
        for item in value:
            _strip_cache_control(item, changes)


def _count(changes: Dict[str, int], kind: str, n: int = 1) -> None:
    if n:
        changes[kind] = changes.get(kind, 0) + n


def drop_path(value: Any, path: Sequence[str]) -> int:
    """Delete the key at a dotted path whose ``*`` segments match every list item; returns how many."""
    if not path:
        return 0
    head, rest = path[0], path[1:]
    if isinstance(value, list):
        if head != "*":
            return 0
        return sum(drop_path(item, rest) for item in value)
    if not isinstance(value, dict) or head not in value:
        return 0
    if not rest:
        del value[head]
        return 1
    return drop_path(value[head], rest)


def sanitize_request(body: Dict[str, Any], profile: Profile, *, drop_paths: Iterable[str] = (),
                     drop_thinking: Optional[Callable[[Dict[str, Any]], bool]] = None) -> Dict[str, int]:
    """Make a Messages request acceptable to an upstream with ``profile``, in place.

    ``drop_paths`` are fields this upstream is known to reject (learned from its errors);
    ``drop_thinking`` says which thinking blocks of the history must go (foreign signatures).
    Returns what was changed, counted per kind; an empty result means the body is untouched.
    """
    changes: Dict[str, int] = {}
    for path in drop_paths:
        if path == BASIC_THINKING_LESSON:
            _basic_thinking(body, changes)
        else:
            _count(changes, f"learned:{path}", drop_path(body, path.split(".")))
    if profile.fields is not None:
        for key in [k for k in body if k not in profile.fields]:
            del body[key]
            _count(changes, f"field:{key}")
    if profile.thinking == "basic":
        _basic_thinking(body, changes)
    if not profile.billing_header:
        _strip_billing_header(body, changes)
    _sanitize_tools(body, profile, changes)
    if not profile.cache_control:
        _strip_cache_control(body.get("system"), changes)
    messages = body.get("messages")
    if isinstance(messages, list):
        body["messages"] = _sanitize_messages(body, messages, profile, drop_thinking, changes)
    return changes


def sanitizable_copy(body: Dict[str, Any], profile: Profile, drop_paths: Sequence[str]) -> Optional[Dict[str, Any]]:
    """A copy of ``body`` that :func:`sanitize_request` (with ``profile`` and ``drop_paths``),
    :func:`strip_thinking_history` and :func:`_fit_max_tokens` may change in place without changing
    ``body``, made in time linear in its messages rather than its bytes: only the levels they change
    in place are copied (the body, its ``thinking`` and ``context_management``, each tool, each
    message); the blocks and everything under them are shared, since they only replace those.
    None where they would change a deeper level (a learned path, or a profile that strips
    ``cache_control`` from every block): the caller then makes a deep copy."""
    if drop_paths or not profile.cache_control:
        return None
    copied = dict(body)
    for key in ("thinking", "context_management"):
        if isinstance(copied.get(key), dict):
            copied[key] = dict(copied[key])
    for key in ("tools", "messages"):
        if isinstance(copied.get(key), list):
            copied[key] = [dict(item) if isinstance(item, dict) else item for item in copied[key]]
    return copied


def spliced_json(raw: bytes, spans: Dict[str, Tuple[int, int]], original: Dict[str, Any],
                 changed: Dict[str, Any]) -> bytes:
    """``changed``, a copy of ``original`` (the object ``raw`` holds) with some members changed, as
    JSON bytes in which each member kept as it was is the client's own text (``spans``: where each
    value lies in ``raw``, :func:`parse_json_body`) rather than encoded again: a 2 MB Claude Code
    body whose model or stream flag changed costs a copy of its bytes, not a ``json.dumps`` of its
    messages. A member counts as kept when its
    value is equal and of the same type (``changed``'s copies of the messages compare in time
    linear in their count, the blocks being shared)."""
    pieces = []
    for key, value in changed.items():
        span = spans.get(key)
        kept = span is not None and key in original and (
            original[key] is value or (type(original[key]) is type(value) and original[key] == value))
        pieces.append(json.dumps(key, ensure_ascii=False).encode("utf-8") + b":"
                      + (raw[span[0]:span[1]] if kept
                         else json.dumps(value, ensure_ascii=False).encode("utf-8")))
    return b"{" + b",".join(pieces) + b"}"


#: A JSON object's last member when it is ``"stream": false``, and the object's end (any spacing JSON allows).
_STREAM_FALSE_AT_END = re.compile(rb'"stream"[ \t\r\n]*:[ \t\r\n]*false[ \t\r\n]*\}[ \t\r\n]*')


def stream_made_true(raw: bytes, has_stream: bool) -> Optional[bytes]:
    """``raw``, a JSON object's bytes (valid: its body was parsed; ``has_stream``: whether it has a
    ``stream`` member), with ``stream`` made true, where that is a change at its end: the request
    of an SDK or a script that wants its answer whole, which agproxy asks for as a stream
    (``force_stream_internally``), then goes as the client's bytes with a few bytes changed, not
    encoded again (34 us for a 9 KB Claude Code body). So when ``"stream": false`` is its last
    member (what comes just before the object's closing brace is a member of the object itself:
    nothing there is inside a string), or when it has no ``stream`` at all (the member goes last).
    None otherwise: the caller writes the object anew. (A client that says ``stream`` twice, as
    JSON allows, has its first saying kept, as it is kept when nothing changes: an upstream that
    reads that one answers with JSON, which agproxy takes as well.)"""
    if has_stream:
        at = raw.rfind(b'"stream"')  # (from the end: where it is, nearly at once)
        if at < 0 or not _STREAM_FALSE_AT_END.fullmatch(raw, at):
            return None
        members = raw[:at].rstrip(_JSON_SPACE_BYTES)  # up to the comma before it
        return members + b'"stream":true}' if members.endswith(b",") else None
    body = raw.rstrip(_JSON_SPACE_BYTES)
    members = body[:-1].rstrip(_JSON_SPACE_BYTES)  # (the object's, up to its closing brace)
    if not body.endswith(b"}") or members.endswith(b"{"):
        return None  # (an empty object gets no member this way)
    return members + b',"stream":true}'


#: The line Claude Code puts first in its system prompt: ``x-anthropic-billing-header: cc_version=...;
#: cc_entrypoint=...;``. It varies by release (by request in some), so for any upstream but
#: Anthropic it only busts the prompt prefix cache.
_BILLING_HEADER = "x-anthropic-billing-header:"


def _strip_billing_header(body: Dict[str, Any], changes: Dict[str, int]) -> None:
    """Remove Claude Code's billing-header line from the start of the system prompt."""
    system = body.get("system")
    if isinstance(system, str) and system.startswith(_BILLING_HEADER):
        body["system"] = system.partition("\n")[2].lstrip("\n")
        _count(changes, "billing_header_stripped")
    elif isinstance(system, list) and system and isinstance(system[0], dict) and \
            str(system[0].get("text") or "").startswith(_BILLING_HEADER):
        rest = str(system[0]["text"]).partition("\n")[2].lstrip("\n")
        body["system"] = ([dict(system[0], text=rest)] if rest.strip() else []) + system[1:]
        _count(changes, "billing_header_stripped")


def _basic_thinking(body: Dict[str, Any], changes: Dict[str, int]) -> None:
    thinking = body.get("thinking")
    if not isinstance(thinking, dict):
        return
    if thinking.pop("display", None) is not None:
        _count(changes, "thinking_display_dropped")
    if thinking.get("type") != "adaptive":
        return
    max_tokens = body.get("max_tokens") if isinstance(body.get("max_tokens"), int) else 0
    if max_tokens <= 1024:
        del body["thinking"]  # no room for the 1024-token minimum budget
        _count(changes, "thinking_dropped")
        return
    body["thinking"] = {"type": "enabled", "budget_tokens": min(max_tokens - 1, max(1024, max_tokens // 4))}
    _count(changes, "thinking_adaptive_mapped")


def _sanitize_tools(body: Dict[str, Any], profile: Profile, changes: Dict[str, int]) -> None:
    tools = body.get("tools")
    if not isinstance(tools, list):
        return
    kept = []
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        if not profile.server_tools and tool.get("type") not in (None, "custom"):
            _count(changes, "server_tool_dropped")
            continue
        if profile.tool_fields is not None:
            for key in [k for k in tool if k not in profile.tool_fields and k != "cache_control"]:
                del tool[key]
                _count(changes, f"tool_field:{key}")
        if not profile.cache_control:
            _strip_cache_control(tool, changes)
        kept.append(tool)
    if len(kept) != len(tools):
        names = {t.get("name") for t in kept}
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "tool" and choice.get("name") not in names:
            body["tool_choice"] = {"type": "auto"}
            _count(changes, "tool_choice_reset")
        if kept:
            body["tools"] = kept
        else:
            body.pop("tools", None)
            body.pop("tool_choice", None)


def _sanitize_messages(body: Dict[str, Any], messages: List[Any], profile: Profile,
                       drop_thinking: Optional[Callable[[Dict[str, Any]], bool]],
                       changes: Dict[str, int]) -> List[Dict[str, Any]]:
    cleaned: List[Dict[str, Any]] = []
    pending_system: List[str] = []  # system-role texts waiting for the next user turn
    moved_system: List[Dict[str, Any]] = []  # system-role texts for the system prompt (added once)
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        content = message.get("content")
        if isinstance(content, list):
            blocks, converted = [], False
            for block in content:
                if isinstance(block, dict):
                    kind = block.get("type")
                    if (kind == "tool_use" and role != "assistant") or (kind == "tool_result" and role != "user"):
                        block = {"type": "text", "text": _block_text(block)}
                        kind, converted = "text", True
                        _count(changes, "misplaced_tool_block_to_text")
                    if kind == "text" and not str(block.get("text") or "").strip():
                        _count(changes, "empty_text_dropped")
                        continue
                    if kind in ("thinking", "redacted_thinking") and drop_thinking and drop_thinking(block):
                        _count(changes, "thinking_block_dropped")
                        continue
                    if not profile.cache_control:
                        _strip_cache_control(block, changes)
                blocks.append(block)
            if converted or len(blocks) != len(content):
                message = dict(message, content=blocks)
        elif isinstance(content, str) and not content.strip():
            message = dict(message, content="")
        if role == "system" and profile.system_messages != "keep":
            text = _block_text(message.get("content"))
            _count(changes, "system_message_moved")
            if not text.strip():
                continue
            if profile.system_messages == "system":
                moved_system.append({"type": "text", "text": text})
            else:
                pending_system.append(text)
            continue
        if not message.get("content"):
            _count(changes, "empty_message_dropped")
            continue
        if pending_system and role == "user":
            texts = [{"type": "text", "text": t} for t in pending_system]
            message = dict(message, content=texts + _block_list(message["content"]))
            pending_system = []
        cleaned.append(message)
    if pending_system:
        cleaned.append({"role": "user", "content": [{"type": "text", "text": t} for t in pending_system]})
    if moved_system:
        system = body.get("system")
        body["system"] = (_block_list(system) if system is not None else []) + moved_system
    if profile.merge_roles:
        cleaned = _merge_same_role(cleaned, changes)
    if cleaned and cleaned[0].get("role") == "assistant":
        cleaned.insert(0, {"role": "user", "content": CONTINUATION_TEXT})
        _count(changes, "first_user_inserted")
    return _pair_tools(cleaned, changes)


def _merge_same_role(messages: List[Dict[str, Any]], changes: Dict[str, int]) -> List[Dict[str, Any]]:
    """Consecutive messages of one role as one (each run's blocks gathered once: linear time)."""
    runs: List[List[Dict[str, Any]]] = []
    for message in messages:
        if runs and runs[-1][0].get("role") == message.get("role"):
            runs[-1].append(message)
        else:
            runs.append([message])
    merged = []
    for run in runs:
        if len(run) == 1:
            merged.append(run[0])
            continue
        merged.append(dict(run[0], content=[block for item in run for block in _block_list(item["content"])]))
        _count(changes, "messages_merged", len(run) - 1)
    return merged


def _pair_tools(messages: List[Dict[str, Any]], changes: Dict[str, int]) -> List[Dict[str, Any]]:
    """Every tool_use answered in the next user turn, every tool_result answering one, results first."""
    out: List[Dict[str, Any]] = []
    expected: List[str] = []  # tool_use ids of the assistant turn just before
    for message in messages:
        role = message.get("role")
        if role == "user":
            message = _answer_tools(message, expected, changes)
            expected = []
        elif role == "assistant":
            if expected:
                out.append(_answer_tools({"role": "user", "content": []}, expected, changes))
            blocks = message.get("content")
            calls = [b["id"] for b in blocks if isinstance(b, dict) and b.get("type") == "tool_use"
                     and isinstance(b.get("id"), str)] if isinstance(blocks, list) else []
            expected = list(dict.fromkeys(calls)) if len(calls) > 1 else calls  # each id once
        out.append(message)
    if expected:
        out.append(_answer_tools({"role": "user", "content": []}, expected, changes))
    return out


def _orphan_result_text(block: Dict[str, Any]) -> Dict[str, Any]:
    """A tool_result that answers no call of the turn before as the text block it is kept as,
    where it stood: an upstream refuses a result for a call it cannot see."""
    return {"type": "text", "text": f"[result of tool call {block.get('tool_use_id')}]\n{_block_text(block)}".rstrip()}


def _answered_in_order(content: Any, expected: List[str]) -> bool:
    """Whether a user turn's ``content`` is a list that begins with one tool_result for each id of
    ``expected`` (distinct), in its order, and holds no other tool_result: the usual turn, which
    :func:`_answer_tools` leaves as it is, known without sorting or copying its blocks."""
    if not isinstance(content, list) or len(content) < len(expected):
        return False
    for block, tool_id in zip(content, expected):
        if not isinstance(block, dict) or block.get("type") != "tool_result" or block.get("tool_use_id") != tool_id:
            return False
    return not any(isinstance(block, dict) and block.get("type") == "tool_result"
                   for block in content[len(expected):])


def _answer_tools(message: Dict[str, Any], expected: List[str], changes: Dict[str, int]) -> Dict[str, Any]:
    """The user turn ``message`` with one tool_result for each call of ``expected`` (the assistant
    turn's before it), first and in the calls' order: a missing one synthesized, one that answers
    no call kept as text (each counted in ``changes``); ``message`` itself when nothing changes."""
    if _answered_in_order(message.get("content"), expected):
        return message
    original = _block_list(message.get("content"))
    if not expected and not any(isinstance(b, dict) and b.get("type") == "tool_result" for b in original):
        return message
    results, others, answered, repaired = [], [], set(), 0
    position = {tool_id: i for i, tool_id in enumerate(expected)}  # a dict: thousands of calls stay linear
    for block in original:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            tool_id = block.get("tool_use_id")
            if tool_id in position and tool_id not in answered:
                answered.add(tool_id)
                results.append(block)
                continue
            others.append(_orphan_result_text(block))
            _count(changes, "orphan_tool_result_to_text")
            repaired += 1
        else:
            others.append(block)
    for tool_id in expected:
        if tool_id not in answered:
            results.append({"type": "tool_result", "tool_use_id": tool_id, "is_error": True,
                            "content": INTERRUPTED_TOOL_TEXT})
            _count(changes, "tool_result_synthesized")
            repaired += 1
    ordered = sorted(results, key=lambda b: position[b["tool_use_id"]]) + others
    if ordered == original:
        return message
    if not repaired:
        _count(changes, "tool_results_reordered")
    return dict(message, content=ordered)


def sanitize_betas(value: Optional[str], profile: Profile,
                   rejected: Iterable[str] = ()) -> Tuple[Optional[str], Dict[str, int]]:
    """The ``anthropic-beta`` header to send upstream (None for none) and what was dropped."""
    changes: Dict[str, int] = {}
    if not value:
        return None, changes
    betas = [b.strip() for b in value.split(",") if b.strip()]
    if not profile.betas:
        _count(changes, "betas_dropped", len(betas))
        return None, changes
    rejected = set(rejected)
    kept = [b for b in betas if b not in rejected]
    for beta in betas:
        if beta in rejected:
            _count(changes, f"beta:{beta}")
    return (",".join(kept) or None), changes


# -- warmups and sessions ------------------------------------------------------------------

#: Longest text still taken for a Claude Code warmup probe ("Warmup" plus a little).
_WARMUP_MAX_CHARS = 200


def is_warmup(body: Dict[str, Any]) -> bool:
    """True when the last message is a Claude Code warmup probe: a short text starting "Warmup",
    a text block "Warmup" or starting "Warmup\\n", or an error tool_result starting "Warmup"."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return False
    last = messages[-1]
    if last.get("role") != "user":
        return False
    content = last.get("content")
    if isinstance(content, str):
        return content.startswith("Warmup") and len(content) <= _WARMUP_MAX_CHARS
    if not isinstance(content, list) or not content:
        return False
    block = content[-1]
    if not isinstance(block, dict):
        return False
    if block.get("type") == "text":
        text = str(block.get("text") or "")
        return text == "Warmup" or (text.startswith("Warmup\n") and len(text) <= _WARMUP_MAX_CHARS)
    if block.get("type") == "tool_result" and block.get("is_error"):
        return _block_text(block).startswith("Warmup")
    return False


def warmup_message(model: str) -> Dict[str, Any]:
    """The local answer to a warmup: a valid, minimal Message."""
    return {"id": new_message_id(), "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "OK"}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1}}


_SESSION_IN_USER_ID = re.compile(r"session_([0-9a-fA-F-]{8,})")


def session_id(headers: Headers, body: Dict[str, Any]) -> Optional[str]:
    """Claude Code's session: ``X-Claude-Code-Session-Id``, else the one inside ``metadata.user_id``."""
    value = header_value(headers, "x-claude-code-session-id")
    if value:
        return value.strip()[:100]
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if not isinstance(user_id, str):
        return None
    if user_id.startswith("{"):
        try:
            parsed = loads_strict(user_id)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("session_id"), str):
            return parsed["session_id"][:100]
    match = _SESSION_IN_USER_ID.search(user_id)
    return match.group(1) if match else None


# =====================================================================================
# 6. Anthropic answers
#    Stream bookkeeping: the accumulator (events -> one Message), the check of relayed events,
#    a Message as events; upstream errors in Anthropic's vocabulary, what an upstream's 400 says
#    it rejects and the healing policy (heal_decision); the signature book and watcher;
#    context-window signalling. Pure: nothing here awaits or touches sockets.
# =====================================================================================

#: Google's ``ErrorInfo`` reasons that blame the key or its project, not the request.
_GOOGLE_KEY_REASONS = frozenset((
    "API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED", "API_KEY_HTTP_REFERRER_BLOCKED",
    "API_KEY_IP_ADDRESS_BLOCKED", "API_KEY_ANDROID_APP_BLOCKED", "API_KEY_IOS_APP_BLOCKED", "SERVICE_DISABLED",
    "CONSUMER_SUSPENDED", "CONSUMER_INVALID", "BILLING_DISABLED", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"))
#: ... and the fixed openings of Google's messages that do (a message may go on to quote the
#: request, a file name the client chose, so nothing past its opening is read).
_GOOGLE_KEY_OPENINGS = ("API key not valid", "API key expired", "API Key not found", "Method doesn't allow "
                        "unregistered callers", "Permission denied: Consumer", "Permission denied on resource project",
                        "Generative Language API has not been used in project", "Your project has been denied access",
                        "This API method requires billing to be enabled")


#: ``error.type`` or ``error.code`` values that refuse one model to a key that serves others:
#: LiteLLM's ``*_model_access_denied`` (401) and OpenAI's ``model_not_found`` (its 403 "Project
#: `proj_...` does not have access to model `gpt-...`"). The upstream sets them, never a client.
_MODEL_REFUSED_CODES = frozenset(("key_model_access_denied", "team_model_access_denied", "user_model_access_denied",
                                  "org_model_access_denied", "model_not_found"))
#: ... and the fixed openings of the messages that say so where no such field is sent (LiteLLM
#: before it had the types; OpenAI's project message). Only the opening is read: the model name
#: after it is the client's to choose.
_MODEL_REFUSED_OPENING = _LazyPattern(r"(?:Authentication Error, )?(?:API Key|key|team|user|organization) not allowed "
                                      r"to access model\b|Project `[^`]{1,100}` does not have access to model `")


def refuses_model(status: int, parsed: Any) -> bool:
    """Whether an upstream's 401/403 (its JSON body, parsed) refuses the model only, not the key."""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if status not in (401, 403) or not isinstance(error, dict):
        return False
    codes, message = (error.get("type"), error.get("code")), error.get("message")
    return any(isinstance(code, str) and code in _MODEL_REFUSED_CODES for code in codes) or \
        (isinstance(message, str) and _MODEL_REFUSED_OPENING.match(message) is not None)


#: How upstreams say that an account has run out of money, beside HTTP 402 (OpenRouter, DeepSeek
#: and others): Anthropic answers 400 (the credit balance, and a spend limit its owner set), OpenAI
#: 429 with the code ``insufficient_quota``. Only the fixed openings count (a client's words echoed
#: later in a message never do).
_OUT_OF_CREDIT_OPENINGS = ("Your credit balance is too low", "You have reached your specified API usage limits",
                           "You have reached your specified workspace API usage limits")
_OUT_OF_CREDIT_CODES = ("insufficient_quota",)


def _says_out_of_credit(error: Dict[str, Any]) -> bool:
    """Whether an upstream's ``error`` object says the account has no money left to spend."""
    return str(error.get("message") or "").startswith(_OUT_OF_CREDIT_OPENINGS) or \
        error.get("code") in _OUT_OF_CREDIT_CODES or error.get("type") in _OUT_OF_CREDIT_CODES


def upstream_status_of(status: int, body: bytes) -> int:
    """The status an upstream's error answer means. An account out of credit is a 402, whatever
    status says it (:data:`_OUT_OF_CREDIT_OPENINGS`): the account is rested and the next one
    tried, never the client blamed. Google answers a key it does not take with a
    400 (``API_KEY_INVALID``), which means what a 401 means (rotate the key, never blame the
    client); and its 403 is the key's or its project's only when it says so, since Gemini also
    answers 403 to a request that names a file its project may not read (the request's fault, a
    400). Only Google's own ``ErrorInfo`` reasons and the fixed openings of its messages count: a
    client's words that Gemini echoes in a message never do. OpenRouter's 403 for a request its
    moderation flagged (``metadata.flagged_input`` quotes the client's words) is the request's too.
    A 403 that is not JSON (an HTML page) comes from a firewall or proxy in front of the API, which
    may block a request for its words: a failed attempt (502), not a rejected key, since a key rested
    for one client's words would refuse every client for ten minutes."""
    if status not in (400, 403, 429):
        return status
    try:
        parsed = loads_strict(body)
    except (ValueError, UnicodeDecodeError):
        return 502 if status == 403 else status
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if status == 403 and isinstance(error, dict) and isinstance(error.get("metadata"), dict) \
            and "flagged_input" in error["metadata"]:
        return 400
    if isinstance(error, dict) and status in (400, 429) and _says_out_of_credit(error):
        return 402
    if status == 429 or not isinstance(error, dict) or not isinstance(error.get("status"), str):
        return status  # not Google's shape: a 403 stays the key's problem
    details = error.get("details") if isinstance(error.get("details"), list) else []
    reasons = {d.get("reason") for d in details if isinstance(d, dict) and isinstance(d.get("reason"), str)}
    message = str(error.get("message") or "")
    blames_key = bool(reasons & _GOOGLE_KEY_REASONS) or message.startswith(_GOOGLE_KEY_OPENINGS)
    if status == 400:
        return 401 if blames_key else 400
    return 403 if blames_key else 400


#: Claude Code shows only its own "Credit balance is too low · Add funds: <Anthropic's billing page>"
#: for any error whose message holds these words, whatever the upstream: an upstream's words are
#: quoted with them reworded, so that the client shows agproxy's message naming the upstream.
_OUT_OF_CREDIT_WORDS = _LazyPattern(r"credit balance (?:is )?too low", re.IGNORECASE)


def anthropic_error_from_upstream(status: int, body: bytes, upstream: str) -> AgproxyError:
    """An upstream's error answer as an :class:`AgproxyError` to relay, keeping its status (and,
    as ``upstream_status``, what that status means: :func:`upstream_status_of`).

    The upstream's own Anthropic-shaped error is kept word for word; anything else is wrapped.
    A rejected upstream key is agproxy's problem, not the client's: :data:`KEY_REJECTED_STATUS`, never 401/403.
    """
    message, error_type = "", None
    said, status = status, upstream_status_of(status, body)  # what it answered, and what that means
    try:
        parsed = loads_strict(body)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        message = str(parsed["error"].get("message") or "")
        error_type = parsed["error"].get("type") if isinstance(parsed["error"].get("type"), str) else None
    elif isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        message = parsed["error"]
    if not message:
        snippet = body[:300].decode("utf-8", "replace").strip()
        message = f"upstream {upstream!r} answered HTTP {said}" + (f": {snippet}" if snippet else "")
    if refuses_model(status, parsed):
        refused = ModelRefused(f"upstream {upstream!r} does not let this account's key use the model (HTTP {said}: "
                               f"{message}); ask for another model, or route this one to an upstream whose key may "
                               "use it (model_map)")
        refused.upstream_words = f"HTTP {said}: {message[:300]}"
        refused.upstream_status = status
        return refused
    if status == 402:
        words = _OUT_OF_CREDIT_WORDS.sub("credit balance is not enough", message)
        broke = AgproxyError(f"upstream {upstream!r} says the account agproxy used there is out of credit (HTTP "
                             f"{said}: {words}); agproxy rests that account and tries the upstream's others, if it "
                             "has any; add credit to it, or map the model to another upstream", status=402,
                             error_type="billing_error")
        broke.upstream_words = f"HTTP {said}: {words[:300]}"
        broke.upstream_status = 402
        return broke
    if status in (401, 403):
        rejected = KeyRejected(
            f"upstream {upstream!r} rejected agproxy's key for it (HTTP {said}: {message}); "
            "check the account's api_key in the agproxy config"
        )
        rejected.upstream_words = f"HTTP {said}: {message[:300]}"
        rejected.upstream_status, rejected.upstream_said = status, said
        return rejected
    meaning = status
    if status < 400:
        status = 502
    if status == 404 and repr(upstream) not in message:  # a missing route or model: whose 404 it is
        message = f"upstream {upstream!r} answered HTTP 404: {message}"
    if error_type not in _ERROR_TYPES.values():
        error_type = None  # another API's vocabulary (OpenAI's "server_error", ...): go by the status
    error = AgproxyError(message, status=status, error_type=error_type or error_type_for_status(status))
    error.upstream_status = meaning
    return error


# -- stream accumulator: Anthropic events -> one Message ---------------------------------------

def repair_json_arguments(text: str) -> Optional[Any]:
    """Tool arguments a model wrote not quite as JSON, parsed if a simple repair makes them JSON."""
    candidate = text.strip()
    if candidate.startswith("```"):
        candidate = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", candidate)
    candidate = re.sub(r",\s*([}\]])", r"\1", candidate)
    for attempt in (candidate, candidate + "}", candidate + "\"}", candidate + "]}"):
        try:
            return loads_strict(attempt)
        except ValueError:
            continue
    return None


def parse_tool_arguments(text: str) -> Dict[str, Any]:
    """Tool-call arguments as the ``input`` object: parsed, repaired, or kept raw for the client to see."""
    if not text.strip():
        return {}
    try:
        value = loads_strict(text)
    except ValueError:
        value = repair_json_arguments(text)
        if value is None:
            return {"_unparsed_arguments": text}
    return value if isinstance(value, dict) else {"value": value}


class StreamError(AgproxyError):
    """An ``error`` event inside an upstream's event stream (its type kept, e.g. overloaded_error)."""


_ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                 "permission_error": 403,
                 "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429,
                 "api_error": 500, "overloaded_error": 529}


def _event_object(payload: Dict[str, Any], key: str, kind: str) -> Dict[str, Any]:
    """``payload[key]`` of an upstream event, which must be an object when present."""
    value = payload.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UpstreamFailure(f"upstream sent a {kind} event whose {key} is not an object")
    return value


def _event_index(payload: Dict[str, Any], kind: str) -> int:
    """The block ``index`` of an upstream event: a small non-negative integer."""
    index = payload.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 100_000:
        raise UpstreamFailure(f"upstream sent a {kind} event without a valid index")
    return index


#: What a ``message_delta`` may change in the Message (an upstream's delta cannot rewrite its id or type).
_MESSAGE_DELTA_KEYS = ("stop_reason", "stop_sequence", "container")
#: The string field each text-like delta extends.
_DELTA_FIELDS = {"text_delta": ("text", "text"), "thinking_delta": ("thinking", "thinking"),
                 "signature_delta": ("signature", "signature")}


def stream_error(payload: Dict[str, Any]) -> AgproxyError:
    """The error an upstream's ``error`` event describes, as agproxy answers it before a stream
    has started: its type kept, an upstream's own failure a 502, a rejected key agproxy's problem."""
    error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
    error_type = error["type"] if isinstance(error.get("type"), str) and error["type"] in _ERROR_STATUS else "api_error"
    message = str(error.get("message") or "upstream stream error")[:4000]
    if error_type in _CLIENT_KEY_ERRORS:  # agproxy's key to the upstream, not the client's
        failure = KeyRejected(f"upstream rejected agproxy's key for it ({message}); check the account's api_key")
        failure.upstream_status = _ERROR_STATUS[error_type]
        return failure
    # an upstream's own failure (api_error) is a bad gateway here, not agproxy's internal error
    status = 502 if error_type == "api_error" else _ERROR_STATUS[error_type]
    return StreamError(message, status=status, error_type=error_type)


class MessageAccumulator:
    """Builds the Message an Anthropic event stream describes: text, tool_use with parsed input,
    thinking with its signature, redacted_thinking, citations, usage and stop reason. Pieces are
    joined once at the end (linear in the answer's size); nothing after ``message_stop`` counts."""

    def __init__(self) -> None:
        self.message: Optional[Dict[str, Any]] = None
        self.done = False
        self._blocks: Dict[int, Dict[str, Any]] = {}
        self._json: Dict[int, List[str]] = {}
        self._pieces: Dict[Tuple[int, str], List[str]] = {}

    def feed(self, event: SSEEvent) -> None:
        """Take one encoded event; raises :class:`StreamError` for an ``error`` event."""
        if self.done or event.event == "ping" or not event.data:
            return
        try:
            payload = loads_strict(event.data)
        except ValueError:
            raise UpstreamFailure(f"upstream sent an event that is not JSON ({event.event})") from None
        self.add(event.event, payload)

    def add(self, name: str, payload: Any) -> None:
        """Take one decoded event (the pipeline's :class:`Event` needs no second decoding);
        raises :class:`StreamError` for an ``error`` event."""
        if self.done or name == "ping":
            return
        if not isinstance(payload, dict):
            raise UpstreamFailure(f"upstream sent a {excerpt(name, 40)} event that is not a JSON object")
        kind = payload.get("type") or name
        if not isinstance(kind, str):
            raise UpstreamFailure(f"upstream sent a {excerpt(name, 40)!r} event whose type is not a string")
        if kind == "error":
            raise stream_error(payload)
        if kind == "message_start":
            self.message = dict(_event_object(payload, "message", kind), content=[])
        elif self.message is None and kind != "ping":
            raise UpstreamFailure(f"upstream sent a {excerpt(kind, 40)!r} event before message_start")
        elif kind == "content_block_start":
            index = _event_index(payload, kind)
            block = dict(_event_object(payload, "content_block", kind))
            if block.get("type") in ("tool_use", "server_tool_use"):
                block["input"] = {}
                self._json[index] = []
            self._blocks[index] = block
        elif kind == "content_block_delta":
            index = _event_index(payload, kind)
            self._delta(self._blocks.setdefault(index, {"type": "text", "text": ""}), index,
                        _event_object(payload, "delta", kind))
        elif kind == "content_block_stop":
            index = _event_index(payload, kind)
            if index in self._json:
                self._blocks[index]["input"] = parse_tool_arguments("".join(self._json.pop(index)))
        elif kind == "message_delta":
            delta = _event_object(payload, "delta", kind)
            self.message.update({k: delta[k] for k in _MESSAGE_DELTA_KEYS if k in delta})
            usage = self.message.get("usage")
            if not isinstance(usage, dict):
                usage = self.message["usage"] = {}
            merge_usage(usage, _event_object(payload, "usage", kind))
        elif kind == "message_stop":
            self.done = True

    def _delta(self, block: Dict[str, Any], index: int, delta: Dict[str, Any]) -> None:
        if not isinstance(block, dict):
            raise UpstreamFailure("upstream sent a delta for a content block that is not an object")
        kind = delta.get("type") if isinstance(delta.get("type"), str) else None
        if kind in _DELTA_FIELDS:
            field, key = _DELTA_FIELDS[kind]
            piece = delta.get(key, "")
            if not isinstance(piece, str) or not isinstance(block.get(field, ""), str):
                raise UpstreamFailure(f"upstream sent a {kind} whose {field} is not a string")
            self._pieces.setdefault((index, field), []).append(piece)
        elif kind == "input_json_delta":
            self._json.setdefault(index, []).append(str(delta.get("partial_json", "")))
        elif kind == "citations_delta":
            citations = block.setdefault("citations", [])
            if not isinstance(citations, list):
                raise UpstreamFailure("upstream sent a citations_delta for a block whose citations is not a list")
            citations.append(delta.get("citation"))

    def result(self) -> Dict[str, Any]:
        """The finished Message; :class:`UpstreamFailure` if the stream ended early."""
        if self.message is None or not self.done:
            raise UpstreamFailure("the stream ended before message_stop")
        for (index, field), pieces in self._pieces.items():
            block = self._blocks[index]
            block[field] = block.get(field, "") + "".join(pieces)
        self._pieces.clear()
        message = dict(self.message)
        message["content"] = [self._blocks[i] for i in sorted(self._blocks)]
        return check_message(message)


#: Error types an upstream may say about itself that would make a client blame its own key:
#: agproxy's key to the upstream is agproxy's problem (a 502 ``api_error``), never the client's.
_CLIENT_KEY_ERRORS = ("authentication_error", "permission_error")


def upstream_error_event(error: Dict[str, Any], upstream: str = "") -> Dict[str, Any]:
    """An ``error`` payload an upstream sent in its stream, as agproxy relays it: a type from the
    Anthropic vocabulary (``api_error`` for anything else), and a rejected upstream key said so."""
    error_type = error["type"] if isinstance(error.get("type"), str) and error["type"] in _ERROR_STATUS else "api_error"
    message = str(error.get("message") or "upstream stream error")[:4000]
    if error_type in _CLIENT_KEY_ERRORS:
        error_type = "api_error"
        who = f"upstream {upstream!r}" if upstream else "the upstream"
        message = f"{who} rejected agproxy's key for it ({message}); check the account's api_key"
    return error_body(error_type, message)


#: One event of the plain kind, as Anthropic sends them: an optional event line, one data line,
#: a blank line, LF endings (its name and its data).
_PLAIN_EVENT = re.compile(r"(?:event: ?([^\n]*)\n)?data: ?([^\n]*)\n\n")
#: The data of a text, thinking or tool input delta as Anthropic servers write it (compact, or a
#: space after each separator): its index and delta type, and its field, whose string this checks
#: is a valid JSON string. Such data is JSON and nothing but a delta, so the check knows it without
#: decoding it: the usual event costs one match. Any other spelling is decoded.
_CHECKED_DELTA = re.compile(
    r'\{"type": ?"content_block_delta", ?"index": ?(0|[1-9][0-9]{0,4}), ?'
    r'"delta": ?\{"type": ?"(text_delta|thinking_delta|input_json_delta)", ?"(text|thinking|partial_json)": ?'
    r'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"\}\}')
#: A run of ``content_block_delta`` events of one block, each named and of one JSON string, each
#: written with the same bytes before its string (group 1, the first event's; group 2 its index):
#: what :data:`_CHECKED_DELTA` knows of one event, known of the run in one match (:class:`RelayedDeltas`).
_JSON_STRING_BODY = r'[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*'
_DELTA_RUN_HEAD = (
    r'(event: ?content_block_delta\ndata: ?\{"type": ?"content_block_delta", ?"index": ?(0|[1-9][0-9]{0,4}), ?'
    r'"delta": ?\{"type": ?"(?:text_delta", ?"text|thinking_delta", ?"thinking|input_json_delta", ?"partial_json)'
    r'": ?")')
_DELTA_RUN_TEXT = re.compile(
    _DELTA_RUN_HEAD + _JSON_STRING_BODY + r'"\}\}\n\n(?:\1' + _JSON_STRING_BODY + r'"\}\}\n\n)*')
#: The head of a run (:data:`_DELTA_RUN_TEXT`'s group 1), in bytes, for :func:`whole_delta_run`.
_DELTA_RUN_HEAD_BYTES = re.compile(_DELTA_RUN_HEAD.encode())
#: The batches :class:`EventStreamCheck` reads with :func:`whole_delta_run`, from about seven deltas
#: up: below, its fixed cost (a match, translations, a count) is more than the run match's per character (timeit).
_WHOLE_RUN_BYTES = 1024
#: What :func:`whole_delta_run` deletes from a batch's bytes to leave what a JSON string may not hold
#: as it is: quotes, backslashes and control characters (line breaks among them).
_NOT_JSON_SPECIAL = bytes(byte for byte in range(256) if byte >= 0x20 and byte not in b'"\\')


def whole_delta_run(data: bytes) -> Optional[RelayedDeltas]:
    """``data`` as the one run of deltas it is, if :data:`_DELTA_RUN_TEXT` matches all of it and
    no string holds an escape (a batch of text deltas, most reads), known with a few passes over its
    bytes in C instead of a match character by character: it begins with a run's head, and what it
    holds of quotes, backslashes and control characters is, event by event, what the head and its
    end (:data:`_DELTA_END`) hold, so each string holds none of them; between two events comes
    the end and the same head, and it ends with the end, so each event is the head, its string
    and the end. None for anything else (the match decides)."""
    head = _DELTA_RUN_HEAD_BYTES.match(data)
    if head is None or not data.endswith(_DELTA_END):
        return None
    event_head = head.group(1)
    shape = b"\n" + b'"' * (event_head.count(b'"') + 1) + b"\n\n"  # the head's line break and quotes, the end's
    special = data.translate(None, _NOT_JSON_SPECIAL)
    count = len(special) // len(shape)
    if special != shape * count or data.count(_DELTA_END + event_head) != count - 1:
        return None
    return RelayedDeltas(data, int(head.group(2)), len(event_head))
#: An event as :meth:`EventStreamCheck._events` reads it: its (name, data, bytes), or a run of deltas.
_ReadEvent = Union[Tuple[str, str, Optional[bytes]], RelayedDeltas]
#: The event types of the Messages stream's grammar (``error`` is taken apart from them).
_STREAM_EVENT_TYPES = frozenset({"ping", "message_start", "content_block_start", "content_block_delta",
                                 "content_block_stop", "message_delta", "message_stop"})


class EventStreamCheck:
    """Checks an Anthropic event stream an upstream sends before it is relayed as it is, so that the
    client only ever gets a stream in the Messages grammar. ``feed()`` takes whole events and gives
    the :class:`Event` objects to relay, decoded once here, each with its bytes (as they came, when
    nothing needed changing); :class:`UpstreamFailure` for
    what cannot be relayed: before the client has a byte the attempt is then retried elsewhere,
    after it the stream ends with an ``error`` event. Pure; the relay owns the I/O.

    The grammar is a small state machine over each event's type and block index (no second
    encoding of an event that is fine). What is fixed up, since the meaning is plain:

    - an event with no name (a bare ``data:`` line) is named after its data's ``type`` (the
      Anthropic SDKs ignore events without a name);
    - an event type outside the grammar is dropped (the API may add some; clients must ignore
      them, and one that the SDK does not know is lost anyway): :attr:`unknown` lists each once,
      for the relay's log;
    - an unpaired surrogate escape (``\\ud800``) becomes U+FFFD, as on the non-streaming path;
    - an ``error`` event is put in the Anthropic vocabulary; nothing after ``message_stop`` or an
      error is relayed.

    What fails the attempt, since no fix-up would be the upstream's answer: data that is not a JSON
    object with a ``type`` (too deep, or not UTF-8, included); a name that differs from the data's
    type; any event but a ping before ``message_start``, or a second ``message_start``; a block
    started twice, or a delta or stop for a block that is not open.
    """

    def __init__(self, upstream: str, usage: Optional[Dict[str, Any]] = None) -> None:
        self.upstream = upstream
        #: the usage the stream has said so far (message_start's, then message_delta's running
        #: totals), kept in the caller's dict where it gives one: read here, where each event is decoded
        self.usage: Dict[str, Any] = usage if usage is not None else {}
        self.finished = False
        self.unknown: List[str] = []  # event types dropped for the first time (the relay logs and clears them)
        #: what reads events of any other spelling (made at the first such event: most streams have none)
        self._decoder: Optional[SSEDecoder] = None
        self._started = False
        self._open: Set[int] = set()
        self._seen: Set[int] = set()
        self._dropped: FrozenSet[str] = frozenset()  # made anew at each (rare) first drop: no set per stream

    def _fail(self, what: str) -> UpstreamFailure:
        return UpstreamFailure(f"upstream {self.upstream!r} sent an event stream outside the Messages grammar: {what}")

    def _step(self, kind: str, payload: Dict[str, Any]) -> bool:
        """Move the grammar on by one event; False for an event type to drop, raises for one out of place."""
        if kind == "content_block_delta" and type(payload.get("index")) is int and payload["index"] in self._open:
            return True  # the usual event, in one look (only valid indexes are ever open)
        if kind not in _STREAM_EVENT_TYPES:
            if kind not in self._dropped and len(self._dropped) < 16:
                self._dropped = self._dropped | {kind}
                self.unknown.append(kind)
            return False
        if kind == "ping":
            return True
        if kind == "message_start":
            if self._started:
                raise self._fail("a second message_start")
            self._started = True
            return True
        if not self._started:
            raise self._fail(f"a {kind} event before message_start")
        if kind in ("content_block_start", "content_block_delta", "content_block_stop"):
            index = _event_index(payload, kind)
            if kind == "content_block_start":
                if index in self._seen:
                    raise self._fail(f"content block {index} started twice")
                self._seen.add(index)
                self._open.add(index)
            elif index not in self._open:
                raise self._fail(f"a {kind} for content block {index}, which is not open")
            elif kind == "content_block_stop":
                self._open.discard(index)
        elif kind == "message_stop":
            self.finished = True
        return True

    def _events(self, text: str, data: bytes, runs: bool = True) -> Tuple[List[_ReadEvent], bool]:
        """The (name, data, bytes) of the events in ``text``, and whether they are the plain kind
        (their bytes, each event's own, may then be relayed as they came); a missing name is ``""``, as
        is ``message`` (the default name: a client reads it as none, and so does the decoder).
        With ``runs``, plain deltas of one block one after the other come as a :class:`RelayedDeltas`,
        found with one match (:data:`_DELTA_RUN_TEXT`), for :meth:`feed` to check at once."""
        if "\r" not in text and (self._decoder is None or not self._decoder.pending):
            whole = whole_delta_run(data) if runs and len(data) >= _WHOLE_RUN_BYTES else None
            if whole is not None:
                return [whole], True
            plain: List[_ReadEvent] = []
            ascii_only, pos, size = len(text) == len(data), 0, len(text)  # ASCII: the text's offsets are the bytes'
            while pos < size:  # the events one after the other, each its own bytes
                run = _DELTA_RUN_TEXT.match(text, pos) if runs else None
                match = run if run is not None else _PLAIN_EVENT.match(text, pos)
                if match is None:
                    break
                end = match.end()
                raw = data[pos:end] if ascii_only else text[pos:end].encode("utf-8")
                if run is not None:  # its head is ASCII: as many bytes as characters
                    plain.append(RelayedDeltas(raw, int(run.group(2)), run.end(1) - pos))
                else:
                    name, event_data = match.groups()
                    plain.append(("" if name in (None, "message") else name, event_data, raw))
                pos = end
            if pos == size:
                return plain, True
        # comments, stray lines, multi-line data and events without data: the decoder knows them
        # (and what it leaves out never reaches the client)
        if self._decoder is None:
            self._decoder = SSEDecoder()
        return [("" if e.event == "message" else e.event, e.data, None) for e in self._decoder.feed(data)], False

    def feed(self, data: bytes) -> List[Event]:
        """The events of ``data`` (whole events) that may be relayed, each with its bytes: as they
        came when nothing in the batch needed changing, else each event's data written anew."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UpstreamFailure("upstream sent an event stream that is not UTF-8") from None
        events, as_they_came = self._events(text, data)
        kept: List[Event] = []
        sources: List[Optional[str]] = []  # each kept event's data as it came (None: its bytes are right)
        for item in events:
            if type(item) is RelayedDeltas:  # a run of plain deltas of one block: relayed as it is, if it is open
                if not self.finished and item.index in self._open and not (
                        b"\\u" in item.raw and _LONE_SURROGATE_BYTES.search(item.raw)):
                    kept.append(item)
                    sources.append(None)
                    continue
                # else its events one by one, as any other (each refused, dropped or fixed as it says)
                one_by_one = self._events(item.raw.decode("utf-8"), item.raw, runs=False)[0]
            else:
                one_by_one = [item]
            for name, event_data, raw in one_by_one:
                as_they_came = self._keep(name, event_data, raw, kept, sources) and as_they_came
        if not as_they_came:  # the batch is written anew, each event from its data's text
            for event, source in zip(kept, sources):
                if source is not None:
                    event.raw = encode_sse(event.name, source)
        return kept

    def _keep(self, name: str, event_data: str, raw: Optional[bytes], kept: List[Event],
              sources: List[Optional[str]]) -> bool:
        """Check one event and add it to ``kept`` (with its data's text to ``sources``) unless it
        is dropped; False where the batch cannot go as it came (the event was dropped or changed)."""
        if self.finished:
            return False  # nothing after message_stop reaches the client
        as_it_came = True
        if "\\u" in event_data and _LONE_SURROGATE_TEXT.search(event_data):
            event_data, as_it_came = _LONE_SURROGATE_TEXT.sub(r"\1\\ufffd", event_data), False
        delta = _CHECKED_DELTA.fullmatch(event_data) if raw is not None else None
        if delta is not None and (not name or name == "content_block_delta") \
                and _TEXT_DELTA_FIELDS[delta.group(2)] == delta.group(3) and int(delta.group(1)) in self._open:
            kept.append(Event("content_block_delta", None, raw))  # the usual event: a delta of an open block
            sources.append(event_data)
            return as_it_came and bool(name)
        try:
            payload = _decode_bounded(event_data, MAX_UPSTREAM_JSON_DEPTH)
        except ValueError:
            raise UpstreamFailure(f"upstream sent a {excerpt(name, 40)!r} event whose data is not JSON") from None
        kind = payload.get("type") if isinstance(payload, dict) else None
        if not isinstance(kind, str):
            raise UpstreamFailure(f"upstream sent a {excerpt(name, 40)!r} event whose data is not an event object")
        if name and name != kind:
            raise self._fail(f"an event named {excerpt(name, 40)!r} whose data is a {excerpt(kind, 40)!r}")
        if kind == "error":
            error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
            kept.append(Event("error", upstream_error_event(error, self.upstream)))
            sources.append(None)
            self.finished = True
            return False
        if not self._step(kind, payload):
            return False
        if kind == "message_delta" or kind == "message_start":
            holder = payload.get("message") if kind == "message_start" else payload
            usage = holder.get("usage") if isinstance(holder, dict) else None
            if isinstance(usage, dict):
                merge_usage(self.usage, usage)
        # a plain delta keeps only its bytes (one data line): its data is decoded again if asked for
        kept.append(Event(kind, None if kind == "content_block_delta" and raw is not None else payload, raw))
        sources.append(event_data)
        return as_it_came and bool(name)


#: One content_block_delta event as Anthropic servers and agproxy's translators write it (compact
#: or with a space after each separator): its event line, index, delta type, field and JSON string.
#: The stream redactor reads such an event without decoding it; any other event is decoded.
_PLAIN_DELTA = re.compile(
    rb'(event: ?content_block_delta\n)?data: ?\{"type": ?"content_block_delta", ?"index": ?(\d{1,9}), ?'
    rb'"delta": ?\{"type": ?"(text_delta|thinking_delta|input_json_delta)", ?"(text|thinking|partial_json)": ?'
    rb'"([^"\\\n]*(?:\\.[^"\\\n]*)*)"\}\}\n\n')
#: The delta that carries each kind of content block's text, and its field.
_BLOCK_DELTAS = {"text": ("text_delta", "text"), "thinking": ("thinking_delta", "thinking")}
#: The deltas whose text a client joins, and the field holding it.
_TEXT_DELTA_FIELDS = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}
_LENIENT_JSON = json.JSONDecoder(strict=False)


#: An escape that a piece of JSON source ends inside of: a backslash alone, or ``\u`` and up to three digits.
_OPEN_ESCAPE_TEXT = re.compile(r"(?<!\\)(?:\\\\)*(\\(?:u[0-9a-fA-F]{0,3})?)\Z")


def _json_source_plain(text: str) -> str:
    """JSON source (a tool input's ``partial_json``) with the escapes of printable ASCII written
    out, which is the same JSON: a key spelled ``sk-\\u0061nt...`` there is the key to the client
    that parses it, and is then found as it is."""
    if "\\u00" not in text and "\\/" not in text:
        return text
    return _JSON_ASCII_ESCAPE.sub(_unescape_ascii, text.encode("utf-8")).decode("utf-8")


def _escapes_json(plain: re.Match) -> bool:
    """Whether a plain delta (:data:`_PLAIN_DELTA`) is a tool input's JSON source that spells
    printable ASCII with escapes (twice escaped on the wire, where no spelling of a key is looked for)."""
    encoded = plain.group(5)
    return plain.group(4) == b"partial_json" and (b"\\\\u00" in encoded or b"\\\\/" in encoded)


def _json_string(encoded: bytes) -> str:
    """The text a JSON string's body (without its quotes, as :data:`_PLAIN_DELTA` finds it) writes."""
    return _LENIENT_JSON.decode('"' + encoded.decode("utf-8", "replace") + '"')


class DeltaRedactor:
    """Hides the configured secrets in an Anthropic event stream as the client reads it. A block's
    text is the concatenation of its deltas, so a key split across two deltas (or across a block's
    opening text and its first delta) is still a key: the end of each piece that may begin one
    (:class:`_TailMatcher`) is held back and sent at the head of the block's next delta, or alone
    before the block ends (as ``[redacted]`` when it is as long as a key). A whole spelling within
    one event is the byte redactor's (:meth:`Redactor.data`, which every response goes through).

    Pure: ``feed()`` takes batches of whole events and gives the bytes to send. A plain delta
    (:data:`_PLAIN_DELTA`) whose end cannot begin a secret, nearly every delta, passes as it came,
    undecoded: the cost is one match and one scan of its last characters."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        #: per block index: the held text, and the delta type and field it goes out in
        self.held: Dict[int, Tuple[str, str, str]] = {}

    def feed(self, batch: bytes) -> bytes:
        """``batch`` (whole events) as the client may see it."""
        if self.redactor.tail.starts is None:
            return batch  # no configured secret
        out: List[bytes] = []
        copied = pos = 0
        size = len(batch)
        while pos < size:
            plain = _PLAIN_DELTA.match(batch, pos)
            if plain is not None:
                end = plain.end()
                index = int(plain.group(2))
                if index in self.held or self._may_begin_secret(plain) or _escapes_json(plain):
                    out += [batch[copied:pos], self._plain_delta(plain, index)]
                    copied = end
            else:
                end = batch.find(b"\n\n", pos)
                end = size if end < 0 else end + 2
                replaced = self._event(batch[pos:end])
                if replaced is not None:
                    out += [batch[copied:pos], replaced]
                    copied = end
            pos = end
        if not copied:
            return batch
        return b"".join(out) + batch[copied:]

    def _may_begin_secret(self, plain: re.Match) -> bool:
        """Whether a plain delta's JSON string may end with the beginning of a secret: a tool
        input's JSON source may also end inside an escape (``\\`` of ``\\u0073k-...``), which
        :meth:`_piece` holds."""
        encoded = plain.group(5)
        if b"\\" in encoded[-(self.redactor.tail.longest + 6):]:  # an escape (at most 6 bytes): decode it
            text = _json_string(encoded)
            return bool(self.redactor.tail.hold(text)) or (
                plain.group(4) == b"partial_json" and _OPEN_ESCAPE_TEXT.search(text) is not None)
        return bool(self.redactor.tail_bytes.hold(encoded))

    def _plain_delta(self, plain: re.Match, index: int) -> bytes:
        """A plain delta with the held text put before it and the end that may begin a secret held
        back: its JSON string spliced, not decoded, where no escape is near its end (nearly always),
        else written anew."""
        kind, field, encoded = plain.group(3).decode(), plain.group(4).decode(), plain.group(5)
        held = self.held.get(index, ("",))[0]
        if _escapes_json(plain) or b"\\" in encoded[-(self.redactor.tail.longest + 6):] or '"' in held or "\\" in held:
            return self._delta(index, kind, field, _json_string(encoded))
        self.held.pop(index, None)
        # whole keys first, so that what is held never ends one and begins the next (0000|00000000)
        encoded = self.redactor.data(held.encode() + encoded)
        keep = self.redactor.tail_bytes.hold(encoded)
        if keep:
            self.held[index] = (encoded[-keep:].decode("ascii"), kind, field)
            encoded = encoded[:-keep]
        if not encoded:
            return b""
        event = plain.string
        return event[plain.start():plain.start(5)] + encoded + event[plain.end(5):plain.end()]

    def _piece(self, index: int, kind: str, field: str, text: str) -> str:
        """What of a block's next piece of text may go out now (the rest is held)."""
        held = self.held.pop(index, None)
        text = text if held is None else held[0] + text
        if field == "partial_json":  # JSON source: a key may be spelled with escapes (an open one is held)
            text = _json_source_plain(text)
        # whole keys first: what is held must not cut one in two for the byte redactor
        text = self.redactor.spoken(text)
        open_escape = _OPEN_ESCAPE_TEXT.search(text) if field == "partial_json" else None
        cut = len(open_escape.group(1)) if open_escape else 0  # held whole, with what may begin a key before it
        keep = cut + self.redactor.tail.hold(text[:len(text) - cut])
        if keep:
            self.held[index] = (text[-keep:], kind, field)
            text = text[:-keep]
        return text

    def _delta(self, index: int, kind: str, field: str, text: str) -> bytes:
        text = self._piece(index, kind, field, text)
        if not text:
            return b""
        return encode_sse_json("content_block_delta", {"type": "content_block_delta", "index": index,
                                                       "delta": {"type": kind, field: text}})

    def _flush(self, indexes: Iterable[int]) -> bytes:
        """The held text of these blocks, each in a delta of its own (a block ends: nothing follows)."""
        out = []
        for index in sorted(i for i in indexes if i in self.held):
            text, kind, field = self.held.pop(index)
            text = REDACTED if len(text) >= _MIN_SECRET_CHARS else text  # a key cut short is still a key
            out.append(encode_sse_json("content_block_delta", {"type": "content_block_delta", "index": index,
                                                               "delta": {"type": kind, field: text}}))
        return b"".join(out)

    def _event(self, event: bytes) -> Optional[bytes]:
        """An event other than a plain delta, rewritten, or None to send it as it is."""
        if not self.held and b"content_block_" not in event and b"\\u" not in event:
            return None  # it adds no text to a block, and no text waits
        name, lines = None, []
        for line in event.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode("utf-8", "replace")
            elif line.startswith(b"data:"):
                lines.append(line[6:] if line[5:6] == b" " else line[5:])
        try:
            payload = json.loads(b"\n".join(lines))
        except (ValueError, RecursionError):
            return None  # not JSON an event can hold: the checks before this refuse it
        if not isinstance(payload, dict):
            return None
        kind, index = payload.get("type"), payload.get("index")
        index = index if isinstance(index, int) and not isinstance(index, bool) else None
        if kind == "content_block_delta" and isinstance(payload.get("delta"), dict):
            delta = payload["delta"]
            field = _TEXT_DELTA_FIELDS.get(delta.get("type"))
            if field is None and index in self.held:  # a signature_delta, say: the block's text goes first
                return self._flush([index]) + event
            if field is None or not isinstance(delta.get(field), str) or index is None:
                return None
            return self._delta(index, delta["type"], field, delta[field])
        if kind == "content_block_start":
            before = self._flush(i for i in list(self.held) if i != index)
            block = payload.get("content_block")
            opening = _BLOCK_DELTAS.get(block.get("type")) if isinstance(block, dict) else None
            if opening is None or index is None or not isinstance(block.get(opening[1]), str):
                return before + event if before else None
            text = self._piece(index, opening[0], opening[1], block[opening[1]])
            if not before and text == block[opening[1]]:
                return None
            payload = dict(payload, content_block=dict(block, **{opening[1]: text}))
            return before + encode_sse(name, json.dumps(payload, separators=(",", ":"), ensure_ascii=False))
        if kind == "content_block_stop":
            before = self._flush([index] if index is not None else list(self.held))
        elif kind in ("message_delta", "message_stop", "error"):
            before = self._flush(list(self.held))
        else:
            return None  # a ping, say: the held text waits for the block's next delta
        return before + event if before else None


#: The fields of a client protocol's own chunks that carry a model's text piece by piece (Chat
#: Completions' content, reasoning, tool names and arguments, and the tokens of its logprobs;
#: Gemini's text): a secret split across chunks is looked for in each field's text joined over them.
_CHUNK_TEXT_FIELDS = frozenset(("content", "reasoning_content", "reasoning", "refusal", "name", "arguments", "text",
                                "token"))
#: What of a chunk spells its text again another way (Chat's ``logprobs``: each token, and its
#: bytes as numbers; Gemini's ``logprobsResult``): dropped from the chunks that hold a secret.
_CHUNK_TEXT_ECHOES = ("logprobs", "logprobsResult")
#: How much text a passthrough stream holds back while it may begin a secret, and how many bytes
#: of chunks: past either the chunks go out (whole secrets hidden, and the end of the text kept to
#: find one that goes on in the next chunks), so that no upstream can make agproxy hold an answer,
#: or memory, without bound by ending every piece with what begins a key.
MAX_HELD_TEXT_CHARS = 65536
MAX_HELD_CHUNK_BYTES = 1 << 20

#: one text field of a chunk: where it is, and the object and key that hold it
_TextLeaf = Tuple[Tuple[Any, ...], Dict[str, Any], str]


def _text_leaves(value: Any, path: Tuple[Any, ...], out: List[_TextLeaf]) -> None:
    """The text fields (:data:`_CHUNK_TEXT_FIELDS`) of a chunk, in order (its depth is bounded by
    the parser that read it). A list's item is placed by its ``index`` where it has one (Chat's
    choices and tool calls), else by what it is, not where: a client joins Gemini's text parts
    whatever their position, so the text of every part (and of every thought part) is one."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str):
                if item and key in _CHUNK_TEXT_FIELDS:
                    out.append((path + (key,), value, key))
            elif isinstance(item, (dict, list)):
                _text_leaves(item, path + (key,), out)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                index = item.get("index")
                _text_leaves(item, path + ((index if _is_int(index) else
                                            "thought" if item.get("thought") is True else "part"),), out)
            elif isinstance(item, list):
                _text_leaves(item, path + ("part",), out)


class ChunkRedactor:
    """Hides the configured secrets in a stream of a client protocol's own JSON chunks relayed as
    they came (a same-protocol passthrough), as :class:`DeltaRedactor` does for Anthropic's events.
    A whole spelling within a chunk is the byte redactor's. A key a model writes token by token is
    split across chunks: while the text so far of some field (:data:`_CHUNK_TEXT_FIELDS`) may begin
    a secret, the chunks are held back; once it cannot, they go out, and where the joined text
    spells a key, the fields that hold its pieces are rewritten (the first piece says ``[redacted]``,
    the others nothing), and what spells their text again (:data:`_CHUNK_TEXT_ECHOES`) is dropped.
    Nearly every chunk goes out as its very bytes. Each piece of text is looked at a bounded number
    of times, so the cost is linear in the stream.

    Pure: :meth:`feed` each chunk (parsed, and its bytes), :meth:`end` at the stream's end; each
    gives the chunks' bytes that may go out now."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        #: the chunks held back: parsed, their bytes, their text fields
        self.held: List[Tuple[Dict[str, Any], bytes, List[_TextLeaf]]] = []
        self.held_bytes = 0
        self.held_chars = 0
        #: per text field, its pieces over the chunks held, after the end of the text sent before
        #: (kept only past a bound: a secret may go on from it) and how long that end is
        self.texts: Dict[Tuple[Any, ...], List[str]] = {}
        self.sent: Dict[Tuple[Any, ...], int] = {}
        #: the fields whose text so far may begin a secret
        self.holding: Set[Tuple[Any, ...]] = set()

    def feed(self, chunk: Dict[str, Any], raw: bytes) -> List[bytes]:
        """What may go out once ``chunk`` (its bytes ``raw``) has come: none while held."""
        if self.redactor.tail.starts is None:
            return [raw]  # no configured secret
        leaves: List[_TextLeaf] = []
        _text_leaves(chunk, (), leaves)
        if not leaves and not self.held:
            return [self.redactor.data(raw)]
        self.held.append((chunk, raw, leaves))
        self.held_bytes += len(raw)
        touched = set()
        for path, owner, key in leaves:
            self.texts.setdefault(path, []).append(owner[key])
            self.held_chars += len(owner[key])
            touched.add(path)
        for path in touched:
            if self.redactor.tail.hold(self._tail(path)):
                self.holding.add(path)
            else:
                self.holding.discard(path)
        if not self.holding:
            return self._release(False, False)
        if self.held_bytes > MAX_HELD_CHUNK_BYTES or self.held_chars > MAX_HELD_TEXT_CHARS:
            return self._release(False, True)
        return []

    def end(self) -> List[bytes]:
        """What is still held, at the stream's end (a key cut short there is hidden too)."""
        return self._release(True, False) if self.held else []

    def _tail(self, path: Tuple[Any, ...]) -> str:
        """The last characters of a field's text, as many as the longest spelling."""
        pieces, longest = self.texts[path], self.redactor.tail.longest
        tail, size = [], 0
        for piece in reversed(pieces):
            tail.append(piece)
            size += len(piece)
            if size >= longest:
                break
        return "".join(reversed(tail))[-longest:]

    def _release(self, final: bool, forced: bool) -> List[bytes]:
        spans_of: Dict[Tuple[Any, ...], List[Tuple[int, int]]] = {}
        carried: Dict[Tuple[Any, ...], str] = {}
        for path, pieces in self.texts.items():
            text = "".join(pieces)
            spans = self.redactor.spans(text)
            # a key cut short by the stream's end is still a key (a whole one ending it is a span already)
            cut_from = max(len(text) - self.redactor.tail.hold(text), spans[-1][1] if spans else 0) if final \
                else len(text)
            if len(text) - cut_from >= _MIN_SECRET_CHARS:
                spans.append((cut_from, len(text)))
            base = self.sent.get(path, 0)
            spans = [(low, high) for low, high in spans if high > base]  # what went out before is out
            if spans:
                spans_of[path] = spans
            if forced:
                carried[path] = text[-(self.redactor.tail.longest - 1):] if self.redactor.tail.longest > 1 else ""
        rewritten = self._rewrite(spans_of) if spans_of else set()
        out = []
        for number, (chunk, raw, _) in enumerate(self.held):
            data = _COMPACT_JSON.encode(chunk).encode("utf-8", "replace") if number in rewritten else raw
            out.append(self.redactor.data(data))
        self.held, self.held_bytes, self.held_chars, self.holding = [], 0, 0, set()
        self.texts = {path: [tail] for path, tail in carried.items() if tail}
        self.sent = {path: len(tail) for path, tail in carried.items() if tail}
        return out

    def _rewrite(self, spans_of: Dict[Tuple[Any, ...], List[Tuple[int, int]]]) -> Set[int]:
        """Hide the spans of each field's joined text in the held chunks' pieces of it, in one pass
        over them, and drop what spells their text again; the numbers of the chunks changed."""
        changed: Set[int] = set()
        at = dict(self.sent)
        next_span: Dict[Tuple[Any, ...], int] = {}  # per field, its first span not wholly behind
        for number, (_, _, leaves) in enumerate(self.held):
            for leaf_path, owner, key in leaves:
                spans = spans_of.get(leaf_path)
                if spans is None:
                    continue
                piece = owner[key]
                first = leaf_path not in at or at[leaf_path] == self.sent.get(leaf_path, 0)
                start = at.get(leaf_path, 0)
                end = start + len(piece)
                at[leaf_path] = end
                kept, done = [], start
                number_of = next_span.get(leaf_path, 0)
                while number_of < len(spans) and spans[number_of][1] <= start:
                    number_of += 1
                next_span[leaf_path] = number_of
                while number_of < len(spans) and spans[number_of][0] < end:
                    low, high = spans[number_of]
                    number_of += 1
                    kept.append(piece[done - start:max(low, start) - start])
                    if low >= start or first:  # a key begun in text already sent is said here
                        kept.append(REDACTED)
                    done = min(high, end)
                if kept:
                    owner[key] = "".join(kept) + piece[done - start:]
                    changed.add(number)
        for number, (chunk, _, _) in enumerate(self.held):
            if _drop_echoes(chunk):
                changed.add(number)
        return changed


def _drop_echoes(chunk: Dict[str, Any]) -> bool:
    """Drop what spells a chunk's text again (:data:`_CHUNK_TEXT_ECHOES`) from its choices or
    candidates; whether there was any."""
    dropped = False
    items = [item for field in ("choices", "candidates") if isinstance(chunk.get(field), list)
             for item in chunk[field]]
    for item in items:
        if isinstance(item, dict):
            for key in _CHUNK_TEXT_ECHOES:
                if item.get(key) is not None:
                    item[key] = None
                    dropped = True
    return dropped


def check_message(message: Any, upstream: str = "") -> Dict[str, Any]:
    """``message`` if it has the shape of an Anthropic Message that agproxy can pass on (content a
    list of typed blocks, usage an object), else :class:`UpstreamFailure`: what an upstream sends
    is never trusted to be what it claims."""
    who = f"upstream {upstream!r}" if upstream else "upstream"
    if not isinstance(message, dict) or message.get("type", "message") != "message" or \
            message.get("role", "assistant") != "assistant":
        raise UpstreamFailure(f"{who} answered something that is not an assistant Message")
    content = message.get("content")
    if not isinstance(content, list) or not all(isinstance(b, dict) and isinstance(b.get("type"), str)
                                                for b in content):
        raise UpstreamFailure(f"{who} answered a Message whose content is not a list of content blocks")
    if not isinstance(message.get("usage", {}), dict):
        raise UpstreamFailure(f"{who} answered a Message whose usage is not an object")
    return message


def message_events(message: Dict[str, Any], text_piece_chars: int = 0) -> List[Event]:
    """A complete Message as the Anthropic events that would have produced it (for a client that
    asked for a stream of an answer that came whole, and for the demo, whose text comes in pieces
    of about ``text_piece_chars``: 0 sends each block's text in one delta)."""
    start = dict(message, content=[], stop_reason=None, stop_sequence=None,
                 usage=dict(message.get("usage") or {}, output_tokens=1))
    events = [Event("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message.get("content") or []):
        kind = block.get("type") if isinstance(block, dict) else "text"
        if kind == "tool_use":
            opening = dict(block, input={})
            deltas = [{"type": "input_json_delta", "partial_json": json.dumps(block.get("input") or {})}]
        elif kind == "thinking":
            opening = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": block.get("thinking", "")},
                      {"type": "signature_delta", "signature": block.get("signature", "")}]
        elif kind == "text":
            opening = {"type": "text", "text": ""}
            text = block.get("text", "")
            pieces = re.findall(r"\S+\s*|\s+", text) if text_piece_chars else [text]
            deltas, gathered = [], ""
            for word in pieces:
                gathered += word
                if len(gathered) >= text_piece_chars:
                    deltas.append({"type": "text_delta", "text": gathered})
                    gathered = ""
            if gathered or not deltas:
                deltas.append({"type": "text_delta", "text": gathered})
        else:
            opening, deltas = block, []
        events.append(Event("content_block_start", {"type": "content_block_start", "index": index,
                                                    "content_block": opening}))
        events += [Event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
                   for delta in deltas]
        events.append(Event("content_block_stop", {"type": "content_block_stop", "index": index}))
    usage = message.get("usage") or {}
    events.append(Event("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")},
        "usage": {"output_tokens": usage.get("output_tokens", 0)}}))
    events.append(Event("message_stop", {"type": "message_stop"}))
    return events


# -- what an upstream's 400 says it rejects, and the healing policy --------------------------

_EXTRA_INPUT = _LazyPattern(r"([A-Za-z_][\w.]*): Extra inputs are not permitted")
_UNKNOWN_FIELD = _LazyPattern(
    r"(?:Unrecognized request arguments? supplied|Unknown parameter|unknown field|Unrecognized field)"
    r"[:\s]*[`'\"]?([A-Za-z_][\w.]*)", re.IGNORECASE)
_UNEXPECTED_BETAS = _LazyPattern(r"Unexpected value\(s\) (.+?) for the `?anthropic-beta`? header")


def upstream_error_text(body: bytes) -> str:
    """Every message an upstream's error body carries, joined (Anthropic, OpenAI and pydantic shapes)."""
    try:
        parsed = loads_strict(body)
    except (ValueError, UnicodeDecodeError):
        return body[:4000].decode("utf-8", "replace")
    texts: List[str] = []

    def collect(value: Any, key: str = "", depth: int = 0) -> None:
        if depth > MAX_JSON_DEPTH:
            return  # deeper than any real error body; not worth the stack
        if isinstance(value, dict):
            if isinstance(value.get("loc"), list) and isinstance(value.get("msg"), str):
                location = ".".join(str(p) for p in value["loc"] if p != "body")
                texts.append(f"{location}: {value['msg']}")
            for k, v in value.items():
                collect(v, k, depth + 1)
        elif isinstance(value, list):
            for item in value:
                collect(item, key, depth + 1)
        elif isinstance(value, str) and key in ("message", "msg", "detail", "error"):
            texts.append(value)
            if value.startswith("{"):
                try:
                    collect(loads_strict(value), "", depth + 1)
                except ValueError:
                    pass  # a message that merely starts with a brace

    collect(parsed)
    return "\n".join(texts)


#: How a server says a request's shape is not one it knows (pydantic, serde, OpenAPI validators).
_SCHEMA_REFUSAL = _LazyPattern(r"Extra inputs are not permitted|Input tag|does not match any of the expected|"
                               r"unknown (field|variant|parameter)|Unrecognized|Unexpected value|not supported|"
                               r"Input should be", re.IGNORECASE)
#: The lesson learned from an upstream that knows only the basic thinking types (``enabled``,
#: ``disabled``): send adaptive thinking in that form (as ``thinking: basic`` profiles do).
BASIC_THINKING_LESSON = "thinking.type=basic"
_ADAPTIVE_REFUSED = _LazyPattern(r"\bthinking[\w.]*:? [^\n]*?'adaptive'|'adaptive'[^\n]*? for thinking", re.IGNORECASE)


#: Gemini's (protobuf JSON) word for a field it does not know: ``Unknown name "x" at 'a.b_c[0]'``.
_UNKNOWN_NAME = _LazyPattern(r'Unknown name "([A-Za-z_$][\w$]*)"(?: at \'([\w.\[\]]+)\')?')


#: Gemini's word for a model that does not think (Gemma, older models): send no thinkingConfig.
_THINKING_UNSUPPORTED = _LazyPattern(r"Thinking(?: level| budget)? is not supported (?:for|by) this model",
                                     re.IGNORECASE)


def _gemini_field_path(at: str, name: str) -> str:
    """A Gemini error's field location as a dotted path in the JSON sent: ``tools[0].function_declarations``
    is ``tools.0.functionDeclarations`` (its error names fields in snake_case)."""
    parts = [p for p in re.split(r"[.\[\]]+", at) if p] + [name]
    return ".".join(re.sub(r"_([a-z])", lambda m: m.group(1).upper(), p) for p in parts)


def _not_quoted(pattern: re.Pattern, text: str, sent_text: str) -> List[re.Match]:
    """The matches of ``pattern`` in an upstream's error ``text`` that are not words of the request
    as sent (``sent_text``, its JSON): what the upstream says itself, not what it quotes of the
    request, which a client chose. Nothing agproxy learns for every client comes from a quote."""
    return [m for m in pattern.finditer(text) if json.dumps(m.group(0), ensure_ascii=False)[1:-1] not in sent_text]


def rejected_inputs(body: bytes, sent_text: str = "") -> Tuple[List[str], List[str]]:
    """The field paths and beta values an upstream's 400 says it does not accept (a refused
    adaptive thinking type is :data:`BASIC_THINKING_LESSON`). Words that ``sent_text`` (the request
    as sent) holds are not read, as in :func:`context_report`: a server that quotes the request in
    its error would otherwise let a client's words name a field that agproxy learns to strip from
    every client's requests."""
    text = upstream_error_text(body)

    def said(pattern: re.Pattern) -> List[re.Match]:
        return _not_quoted(pattern, text, sent_text)

    fields = [m.group(1) for m in said(_EXTRA_INPUT) + said(_UNKNOWN_FIELD)]
    fields += [_gemini_field_path(m.group(2) or "", m.group(1)) for m in said(_UNKNOWN_NAME)]
    if said(_THINKING_UNSUPPORTED):
        fields.append("generationConfig.thinkingConfig")
    if said(_ADAPTIVE_REFUSED):
        fields.append(BASIC_THINKING_LESSON)
    betas: List[str] = []
    for listed in (m.group(1) for m in said(_UNEXPECTED_BETAS)):
        betas += [b.strip(" `'\"") for b in listed.split(",") if b.strip(" `'\"")]
    return list(dict.fromkeys(fields)), list(dict.fromkeys(betas))


def _strippable(path: str) -> bool:
    """Whether a learned field path may be stripped: not one that carries the request's meaning."""
    parts = path.split(".")
    if not path or len(path) > 200 or "" in parts:
        return False
    if len(parts) == 1:
        return parts[0] not in PROTECTED_TOP_FIELDS
    return parts[-1] not in PROTECTED_NESTED_KEYS


def learnable_path(body: Dict[str, Any], path: str) -> Optional[str]:
    """The general form of a rejected field path if it is present and safe to strip, else None.

    Indices become ``*`` and union tags in the path (``tools.3.custom.input_examples``) are dropped,
    so ``tools.*.input_examples`` is stripped from every tool. Fields that carry the request's
    meaning are never stripped on an upstream's say-so.
    """
    if path == BASIC_THINKING_LESSON:
        thinking = body.get("thinking")
        return path if isinstance(thinking, dict) and thinking.get("type") == "adaptive" else None
    general = _general_path(body, path.split("."), [])
    if not general:
        return None
    path = ".".join(general)
    return path if _strippable(path) else None


def _general_path(value: Any, parts: List[str], general: List[str]) -> Optional[List[str]]:
    """Follow ``parts`` through ``value``; indices become ``*``, union tags are skipped."""
    if not parts:
        return general if general and general[-1] != "*" else None
    part, rest = parts[0], parts[1:]
    if isinstance(value, list):
        if not part.isdigit() or int(part) >= len(value):
            return None
        return _general_path(value[int(part)], rest, general + ["*"])
    if not isinstance(value, dict):
        return None
    if general and general[-1] == "*" and (value.get("type") == part or (part == "custom" and "type" not in value)):
        as_tag = _general_path(value, rest, general)
        if as_tag is not None:
            return as_tag
    if part in value:
        return _general_path(value[part], rest, general + [part])
    return None


def is_signature_error(status: int, body: bytes) -> bool:
    """An upstream refusing thinking blocks made elsewhere (invalid or foreign signature)."""
    if status != 400:
        return False
    text = upstream_error_text(body).lower()
    return "signature" in text and ("thinking" in text or "invalid" in text or "thought" in text)


#: Self-healing retries per request: each must have something new to try without.
MAX_HEALS = 4


@dataclasses.dataclass(frozen=True)
class Heal:
    """What to do after an upstream's error answer to a request (see :func:`heal_decision`):
    ``retry`` without ``fields``/``betas``, ``strip_thinking`` and retry, ``fit`` (retry asking
    for ``max_tokens``, which fits beside the prompt in the ``window`` the upstream named),
    ``overflow`` (the prompt does not fit even with a small completion: the client is told so
    that it compacts; ``prompt_tokens`` and ``window`` where the upstream named them), or
    ``fail`` (relay the error)."""

    action: str
    fields: Tuple[str, ...] = ()
    betas: Tuple[str, ...] = ()
    max_tokens: Optional[int] = None
    prompt_tokens: Optional[int] = None
    window: Optional[int] = None


#: The least completion a request is fitted to: a prompt that leaves less room than this in the
#: window is a prompt that is too long, not a completion budget that is too big.
MIN_COMPLETION_TOKENS = 1024
#: Tokens left free when max_tokens is fitted to the prompt's size as the server counted it.
_FIT_MARGIN_TOKENS = 16
_CONTEXT_WINDOW_SAID = _LazyPattern(r"maximum context length (?:is|of) (\d+)|available context size \((\d+) tokens\)|"
                                    r"maximum number of tokens allowed \(?(\d+)")
_PROMPT_TOKENS_SAID = _LazyPattern(
    r"\((\d+) in the messages|messages resulted in (\d+) tokens|prompt contains at least (\d+) input tokens|"
    r"request has (\d+) input tokens|(\d+) tokens from the input messages|prompt has (\d+) tokens|"
    r"input token count \(?(\d+)")


@dataclasses.dataclass(frozen=True)
class ContextReport:
    """What an upstream's context-length error says, where it says it: the model's window and
    the prompt's size as the server counted it (vLLM, SGLang, DeepSeek, OpenAI and llama.cpp
    phrase it differently; llama.cpp gives ``n_ctx`` and ``n_prompt_tokens`` as fields)."""

    window: Optional[int] = None
    prompt_tokens: Optional[int] = None


def context_report(data: bytes, sent_text: str = "") -> ContextReport:
    """Read :class:`ContextReport` out of an upstream's error body. A window is read only from
    words that are not in ``sent_text`` (the request as sent): a server that quotes the request
    in its error (a tool's description, a field's value) would otherwise let a client's words name
    the window that agproxy learns and keeps for every client."""
    text = upstream_error_text(data)
    window = _first_number(next(iter(_not_quoted(_CONTEXT_WINDOW_SAID, text, sent_text)), None))
    prompt = _first_number(_PROMPT_TOKENS_SAID.search(text))
    try:
        parsed = loads_strict(data)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        window = window or upstream_count(error.get("n_ctx")) or None
        prompt = prompt if prompt is not None else upstream_count(error.get("n_prompt_tokens"))
    return ContextReport(window, prompt)


def _first_number(match: Optional[re.Match]) -> Optional[int]:
    """The number a match of the context-error patterns holds, if it is a plausible token count
    (its digits are counted before ``int()``, which refuses more than 4300 of them)."""
    if match is None:
        return None
    digits = next(g for g in match.groups() if g is not None)
    return upstream_count(int(digits)) if len(digits) <= len(str(MAX_UPSTREAM_TOKENS)) else None


def sent_max_tokens(sent: Dict[str, Any]) -> Optional[int]:
    """The completion budget a request asked for, in Anthropic or Chat Completions shape."""
    for key in ("max_tokens", "max_completion_tokens"):
        if _is_int(sent.get(key)):
            return sent[key]
    return None


def heal_decision(status: int, data: bytes, sent: Dict[str, Any], beta: Optional[str], *,
                  known_fields: Sequence[str], known_betas: Sequence[str], heals: int,
                  heal_statuses: Sequence[int], heal_thinking: bool, thinking_stripped: bool,
                  window: Optional[int], fitted: bool = False) -> Heal:
    """The pure healing policy, as :func:`decide` is the retry policy: from an upstream's error
    answer and what was sent, the next step. Only what was really sent and is not known already
    can be tried without; a thinking-signature refusal heals once; a context-length error that
    names the prompt's size is fitted once (a completion budget too big is not a prompt too
    long); nothing is learned here."""
    overflow = is_context_overflow(status, data)
    healable = status in heal_statuses and heals < MAX_HEALS
    sent_text = json.dumps(sent, ensure_ascii=False) if healable or overflow else ""  # once: a body may be MBs
    if healable:
        fields, betas = rejected_inputs(data, sent_text)
        sent_betas = {b.strip() for b in (beta or "").split(",")}
        new_fields = tuple(p for p in dict.fromkeys(learnable_path(sent, f) for f in fields)
                           if p is not None and p not in known_fields)
        new_betas = tuple(b for b in dict.fromkeys(betas) if b in sent_betas and b not in known_betas)
        if new_fields or new_betas:
            return Heal("retry", new_fields, new_betas)
    if heal_thinking and not thinking_stripped and is_signature_error(status, data):
        return Heal("strip_thinking")
    if overflow:
        said = context_report(data, sent_text)
        limit = said.window or window
        asked = sent_max_tokens(sent)
        if limit and said.prompt_tokens is not None and not fitted and asked is not None:
            room = limit - said.prompt_tokens - _FIT_MARGIN_TOKENS
            if MIN_COMPLETION_TOKENS <= room < asked:
                return Heal("fit", max_tokens=room, window=said.window)
        if limit:
            return Heal("overflow", prompt_tokens=said.prompt_tokens, window=limit)
    return Heal("fail")


def strip_thinking_history(body: Dict[str, Any]) -> Dict[str, int]:
    """Remove every thinking block from the history; turn thinking off for this turn when the
    upstream would then demand a thinking block at the start of the assistant turn in progress."""
    changes: Dict[str, int] = {}
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            kept = [b for b in content if not (isinstance(b, dict) and b.get("type") in
                                               ("thinking", "redacted_thinking"))]
            if len(kept) != len(content):
                _count(changes, "thinking_block_stripped", len(content) - len(kept))
                message["content"] = kept
    body["messages"] = [m for m in messages if not isinstance(m, dict) or m.get("content")]
    in_tool_loop = any(isinstance(m, dict) and m.get("role") == "assistant" for m in body["messages"][-2:-1])
    thinking = body.get("thinking")
    if in_tool_loop and isinstance(thinking, dict) and thinking.get("type") != "disabled":
        del body["thinking"]
        _count(changes, "thinking_disabled_for_turn")
        management = body.get("context_management")
        if isinstance(management, dict) and isinstance(management.get("edits"), list):
            management["edits"] = [e for e in management["edits"]
                                   if not (isinstance(e, dict) and str(e.get("type", "")).startswith("clear_thinking"))]
            if not management["edits"]:
                del body["context_management"]
    return changes


class SignatureBook:
    """Which upstream produced which thinking signature, by hash, in bounded memory (LRU)."""

    def __init__(self, limit: int = 20_000) -> None:
        self.limit = limit
        self._owners: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        #: how many of the signatures held each upstream made (:meth:`foreign_to` hashes none while
        #: every one held is the asking upstream's own: the usual agproxy of one upstream)
        self._made: Dict[str, int] = {}

    @staticmethod
    def _key(signature: str) -> bytes:
        return hashlib.blake2b(signature.encode("utf-8", "replace"), digest_size=16).digest()

    def record(self, signature: str, upstream: str) -> None:
        """Remember that ``upstream`` made ``signature`` (or a redacted_thinking ``data``)."""
        if not signature:
            return
        key = self._key(signature)
        before = self._owners.get(key)
        if before != upstream:
            if before is not None:
                self._forget(before)
            self._made[upstream] = self._made.get(upstream, 0) + 1
        self._owners[key] = upstream
        self._owners.move_to_end(key)
        while len(self._owners) > self.limit:
            self._forget(self._owners.popitem(last=False)[1])

    def _forget(self, upstream: str) -> None:
        """One signature fewer held for ``upstream``."""
        self._made[upstream] -= 1
        if not self._made[upstream]:
            del self._made[upstream]

    def owner(self, signature: str) -> Optional[str]:
        """The upstream that made ``signature``, if it passed through here."""
        return self._owners.get(self._key(signature)) if signature else None

    def record_message(self, message: Any, upstream: str) -> None:
        """Remember the signatures of a whole Message's thinking blocks."""
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "thinking":
                self.record(str(block.get("signature") or ""), upstream)
            elif isinstance(block, dict) and block.get("type") == "redacted_thinking":
                self.record(str(block.get("data") or ""), upstream)

    def foreign_to(self, upstream: str) -> Callable[[Dict[str, Any]], bool]:
        """A test for thinking blocks that another upstream made (unknown ones are kept)."""

        def foreign(block: Dict[str, Any]) -> bool:
            signature = str(block.get("signature") or block.get("data") or "")
            if signature.startswith(GEMINI_SIGNATURE_PREFIX):
                return True  # a Gemini signature carried through an Anthropic answer: never Anthropic's
            makers = self._made
            if not makers or (len(makers) == 1 and upstream in makers):
                return False  # every signature held is upstream's own (or none is held): none is foreign
            made_by = self.owner(signature)
            return made_by is not None and made_by != upstream

        return foreign


class CallSignatures:
    """The thought signature of each Gemini function call, by its tool_use id, in bounded memory
    (LRU): where a client sends a tool_use back without the thinking block that carried its
    signature, the signature is still put back. Signatures larger than any real one are not kept."""

    MAX_SIGNATURE_CHARS = 65536

    def __init__(self, limit: int = 2048) -> None:
        self.limit = limit
        self._by_id: collections.OrderedDict[str, str] = collections.OrderedDict()

    def record(self, call_id: str, signature: str) -> None:
        """Remember the signature Gemini gave call ``call_id``."""
        if not call_id or not signature or len(signature) > self.MAX_SIGNATURE_CHARS:
            return
        self._by_id[call_id] = signature
        self._by_id.move_to_end(call_id)
        while len(self._by_id) > self.limit:
            self._by_id.popitem(last=False)

    def get(self, call_id: str) -> Optional[str]:
        """The signature of call ``call_id``, if it passed through here."""
        return self._by_id.get(call_id)


class SignatureWatcher:
    """Reads a relayed Anthropic event stream and records its thinking signatures."""

    def __init__(self, book: SignatureBook, upstream: str) -> None:
        self.book = book
        self.upstream = upstream
        self._parts: Dict[int, List[str]] = {}
        self._thinking: Set[int] = set()  # the thinking blocks open: only their deltas can carry a signature

    def feed(self, events: List[Event]) -> None:
        """Look at a batch of the stream's events (decoded already: only their data is read)."""
        for event in events:
            name = event.name
            if name == "content_block_delta" and not self._thinking:
                continue  # the usual event, a text or tool delta: one look at its name
            if name not in ("content_block_start", "content_block_delta", "content_block_stop") or \
                    not isinstance(event.data.get("index"), int):
                continue
            payload = event.data
            index = payload["index"]
            if name == "content_block_start":
                block = payload.get("content_block")
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "redacted_thinking":
                    self.book.record(str(block.get("data") or ""), self.upstream)
                elif block.get("type") == "thinking":
                    self._thinking.add(index)
                    if block.get("signature"):
                        self._parts.setdefault(index, []).append(str(block["signature"]))
            elif name == "content_block_delta":
                delta = payload.get("delta")
                if isinstance(delta, dict) and delta.get("type") == "signature_delta":
                    self._parts.setdefault(index, []).append(str(delta.get("signature") or ""))
            else:
                self._thinking.discard(index)
                if index in self._parts:
                    self.book.record("".join(self._parts.pop(index)), self.upstream)


# -- context window signalling --------------------------------------------------------------

#: The context window Claude Code assumes for a model it does not know, and with a 1M-context beta.
CLAUDE_CONTEXT_WINDOW = 200_000
CLAUDE_LONG_CONTEXT_WINDOW = 1_000_000
_OVERFLOW_WORDS = _LazyPattern(
    r"prompt is too long|maximum context length|context length|context window|exceeds the available context|"
    r"too many (input )?tokens|input is too long|context_length_exceeded|exceeds the maximum number of tokens allowed",
    re.IGNORECASE)
#: Longest first, so that claude-opus-5-5 is not taken for claude-opus-5.
_CLAUDE_WINDOWS = sorted(((model, window) for model, _, window, _ in CLAUDE_MODELS), key=lambda m: -len(m[0]))


def client_context_window(headers: Headers, model: Any = None) -> int:
    """The window Claude Code believes it has for ``model`` (what the client asked for): 1M with a
    ``context-1m`` beta or a ``[1m]`` model, else the model's own in :data:`CLAUDE_MODELS` (a dated
    or provider-prefixed id counts), else 200k."""
    betas = header_values(headers, "anthropic-beta")
    if any(b.startswith("context-1m") for b in betas):
        return CLAUDE_LONG_CONTEXT_WINDOW
    name = model.lower() if isinstance(model, str) else ""
    if name.endswith("[1m]"):
        return CLAUDE_LONG_CONTEXT_WINDOW
    for known, window in _CLAUDE_WINDOWS:
        at = name.find(known)
        if at >= 0 and not name[at + len(known):at + len(known) + 1].isalnum():
            return window
    return CLAUDE_CONTEXT_WINDOW


def scale_tokens(tokens: int, upstream_window: int, client_window: int) -> int:
    """``tokens`` of a small window expressed on the client's larger one (never scaled down)."""
    if upstream_window >= client_window:
        return tokens
    return -(-tokens * client_window // upstream_window)


#: The counts of a usage object that say how full the context is (what a smaller window scales).
_SCALED_USAGE_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def scale_usage(usage: Any, upstream_window: int, client_window: int) -> None:
    """Scale the input-side counts of a ``usage`` object in place, so that the client's idea of how
    full its context is matches how full the upstream's smaller window really is."""
    if not isinstance(usage, dict):
        return
    for key in _SCALED_USAGE_KEYS:
        if upstream_count(usage.get(key)) is not None:
            usage[key] = scale_tokens(usage[key], upstream_window, client_window)


def prompt_too_long(tokens: int, upstream_window: int, client_window: int) -> InvalidRequest:
    """The error Claude Code reacts to by compacting, in the client's window terms."""
    scaled = max(scale_tokens(tokens, upstream_window, client_window), client_window + 1)
    return InvalidRequest(f"prompt is too long: {scaled} tokens > {client_window} maximum")


def is_context_overflow(status: int, body: bytes) -> bool:
    """An upstream's own way of saying the prompt does not fit its window."""
    return status in (400, 413, 422) and bool(_OVERFLOW_WORDS.search(upstream_error_text(body)))


def fitted_max_tokens(body: Dict[str, Any], window: int, estimate: int) -> Optional[int]:
    """The completion budget that fits beside the prompt in ``window`` (the estimate is rough, so
    an eighth of the window is kept free, and never less than a small completion), or None when
    the client's already fits."""
    asked = body.get("max_tokens")
    room = max(window - estimate - max(MIN_COMPLETION_TOKENS, window // 8), MIN_COMPLETION_TOKENS)
    return room if _is_int(asked) and asked > room else None


#: The least thinking budget Anthropic's API takes.
_MIN_THINKING_BUDGET = 1024


def _fit_max_tokens(body: Dict[str, Any], max_tokens: Optional[int], changes: Dict[str, int]) -> None:
    """Lower the request's ``max_tokens`` to ``max_tokens``, and a thinking budget with it (a
    budget must stay below max_tokens; one that cannot is turned off)."""
    if max_tokens is None or not _is_int(body.get("max_tokens")) or body["max_tokens"] <= max_tokens:
        return
    body["max_tokens"] = max_tokens
    _count(changes, "max_tokens_fitted")
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and _is_int(thinking.get("budget_tokens")) and \
            thinking["budget_tokens"] >= max_tokens:
        if max_tokens // 2 >= _MIN_THINKING_BUDGET:
            body["thinking"] = dict(thinking, budget_tokens=max_tokens // 2)
        else:
            body.pop("thinking")
        _count(changes, "thinking_budget_fitted")


class UsageScaler:
    """Rewrites the usage of a relayed event stream onto the client's context window."""

    def __init__(self, upstream_window: int, client_window: int) -> None:
        self.upstream_window = upstream_window
        self.client_window = client_window

    def scale(self, events: List[Event]) -> List[Event]:
        """A batch of the stream's events, with message_start/message_delta usage scaled (in
        copies: an event's data may be shared, with what the answer's usage was taken from)."""
        out = []
        for event in events:
            if event.name == "message_start" and isinstance(event.data.get("message"), dict):
                usage = self._scaled(event.data["message"].get("usage"))
                if usage is not None:
                    event = Event(event.name, dict(event.data, message=dict(event.data["message"], usage=usage)))
            elif event.name == "message_delta":
                usage = self._scaled(event.data.get("usage"))
                if usage is not None:
                    event = Event(event.name, dict(event.data, usage=usage))
            out.append(event)
        return out

    def _scaled(self, usage: Any) -> Optional[Dict[str, Any]]:
        """A scaled copy of a usage object that has input-side counts; None for any other."""
        if not isinstance(usage, dict) or not any(key in usage for key in _SCALED_USAGE_KEYS):
            return None
        usage = dict(usage)
        scale_usage(usage, self.upstream_window, self.client_window)
        return usage


# =====================================================================================
# 7. Translators
#    Anthropic Messages <-> OpenAI Chat Completions and <-> Gemini generateContent, each as
#    pure functions and a stream state machine. Nothing here awaits or touches sockets.
# =====================================================================================

#: Function equivalents of Anthropic's client-side typed tools, so a local model can still use them.
_TYPED_TOOL_FUNCTIONS = {
    "bash": {"description": "Run a command in a bash shell.",
             "parameters": {"type": "object", "properties": {
                 "command": {"type": "string", "description": "The command to run."},
                 "restart": {"type": "boolean", "description": "Restart the shell."}}}},
    "str_replace_based_edit_tool": {
        "description": "View, create and edit files: commands view, create, str_replace, insert.",
        "parameters": {"type": "object", "required": ["command", "path"], "properties": {
            "command": {"type": "string", "enum": ["view", "create", "str_replace", "insert", "undo_edit"]},
            "path": {"type": "string"}, "file_text": {"type": "string"}, "old_str": {"type": "string"},
            "new_str": {"type": "string"}, "insert_line": {"type": "integer"},
            "view_range": {"type": "array", "items": {"type": "integer"}}}}},
}
_FINISH_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                   "content_filter": "refusal", "eos": "end_turn", "end_turn": "end_turn"}
_SCHEMA_NOISE = ("$schema", "$id", "$comment")


def _clean_schema(value: Any) -> Any:
    """A JSON schema without the keys servers choke on ($schema, $id, $comment), recursively."""
    if isinstance(value, dict):
        return {k: _clean_schema(v) for k, v in value.items() if k not in _SCHEMA_NOISE}
    if isinstance(value, list):
        return [_clean_schema(v) for v in value]
    return value


def _openai_tools(tools: List[Any], options: OpenAIOptions, changes: Dict[str, int]) -> List[Dict[str, Any]]:
    out = []
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if kind not in (None, "custom"):
            equivalent = _TYPED_TOOL_FUNCTIONS.get(str(tool.get("name")))
            if equivalent is None:
                _count(changes, "server_tool_dropped")
                continue
            # a deep copy: learned rejections delete keys from what is sent, never from the shared table
            out.append({"type": "function", "function": dict(name=tool["name"], **copy.deepcopy(equivalent))})
            _count(changes, "typed_tool_as_function")
            continue
        schema = tool.get("input_schema") or {"type": "object", "properties": {}}
        function = {"name": tool.get("name"), "parameters": _clean_schema(schema) if options.clean_schemas else schema}
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _openai_tool_choice(choice: Any, names: Iterable[str]) -> Any:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        if choice.get("name") not in set(names):
            raise InvalidRequest(f"tool_choice names {choice.get('name')!r}, a tool this upstream cannot offer "
                                 "(Anthropic server tools have no OpenAI-compatible equivalent)")
        return {"type": "function", "function": {"name": choice["name"]}}
    return "auto"


def _image_part(source: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
        return {"type": "image_url", "image_url": {"url": url}}
    if source.get("type") == "url":
        return {"type": "image_url", "image_url": {"url": source.get("url")}}
    return None


def document_text(block: Dict[str, Any]) -> Optional[str]:
    """A text document's text (its title first), or None for one that is not text (a PDF)."""
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "text":
        title = f"{block['title']}\n" if block.get("title") else ""
        return title + str(source.get("data") or "")
    if source.get("type") == "content":
        return _block_text(source.get("content"))
    return None


def _user_parts(blocks: List[Any], upstream: str) -> List[Dict[str, Any]]:
    """Anthropic user content blocks (no tool results) as Chat Completions content parts."""
    parts: List[Dict[str, Any]] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        source = block.get("source") if isinstance(block.get("source"), dict) else {}
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            image = _image_part(source)
            if image:
                parts.append(image)
        elif kind == "document":
            text = document_text(block)
            if text is not None:
                parts.append({"type": "text", "text": text})
            else:
                raise InvalidRequest(f"a {source.get('media_type') or source.get('type')} document cannot be sent "
                                     f"to upstream {upstream!r} (OpenAI-compatible servers take text documents "
                                     "only); extract its text first")
    return parts


def _content_value(parts: List[Dict[str, Any]]) -> Any:
    """A plain string when every part is text (what the most servers take), else the parts."""
    if all(p["type"] == "text" for p in parts):
        return "\n\n".join(p["text"] for p in parts)
    return parts


def anthropic_to_openai(body: Dict[str, Any], options: OpenAIOptions, upstream: str) -> Tuple[Dict[str, Any],
                                                                                               Dict[str, int]]:
    """A sanitized Anthropic Messages request as a Chat Completions request, and what was dropped.

    The conversation that comes out is one a strict server accepts: every tool call answered
    right after it, in order, no empty messages, no fields Chat Completions does not define.
    """
    changes: Dict[str, int] = {}
    messages: List[Dict[str, Any]] = []
    system = body.get("system")
    system_text = system if isinstance(system, str) else _block_text(system)
    if system_text.strip():
        messages.append({"role": "system", "content": system_text})
    for message in body.get("messages") or []:
        role = message.get("role")
        content = message.get("content")
        blocks = _block_list(content)
        if role == "system":
            messages.append({"role": "system", "content": _block_text(blocks)})
        elif role == "assistant":
            messages.append(_openai_assistant(blocks, options, changes))
        else:
            messages += _openai_user_turn(blocks, upstream)
    out: Dict[str, Any] = {"model": body.get("model"), "messages": messages}
    if isinstance(body.get("max_tokens"), int):
        out[options.max_tokens_field] = body["max_tokens"]
    for key in ("temperature", "top_p"):
        if key in body:
            out[key] = body[key]
    if "top_k" in body:
        if options.top_k:
            out["top_k"] = body["top_k"]
        else:
            _count(changes, "field:top_k")
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"][:256]
    tools = _openai_tools(body.get("tools") or [], options, changes)
    if tools:
        out["tools"] = tools
        names = [t["function"]["name"] for t in tools]
        if "tool_choice" in body:
            out["tool_choice"] = _openai_tool_choice(body["tool_choice"], names)
            if isinstance(body["tool_choice"], dict) and body["tool_choice"].get("disable_parallel_tool_use"):
                out["parallel_tool_calls"] = False
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        if options.reasoning_effort:
            budget = thinking.get("budget_tokens") or 16000
            out["reasoning_effort"] = "low" if budget < 4096 else "medium" if budget < 16384 else "high"
        if options.thinking_body:
            out.update(copy.deepcopy(options.thinking_body))  # the config's dicts stay the config's
        if not options.reasoning_effort and not options.thinking_body:
            _count(changes, "thinking_dropped")
    schema = output_schema(body)
    if schema is not None:
        out["response_format"] = _openai_response_format(schema)
    if body.get("stream"):
        out["stream"] = True
        if options.stream_usage:
            out["stream_options"] = {"include_usage": True}
    return out, changes


def check_structured(message: Dict[str, Any], upstream: str) -> Dict[str, Any]:
    """Raise :class:`NotStructured` unless a whole answer's text is JSON (in a ```json fence, as
    some models write it, too), as a request with a schema must be answered; the answer as the
    client gets it: ``message`` itself, or for fenced JSON a copy whose text is the JSON inside
    (one text block where the first was), since the client asked for JSON, not Markdown."""
    texts = [block for block in message.get("content") or [] if isinstance(block, dict) and block.get("type") == "text"]
    text = "".join(str(block.get("text") or "") for block in texts).strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.S)
    try:
        json.loads(fenced.group(1) if fenced else text)
    except ValueError:
        cut = " (it was cut at max_tokens)" if message.get("stop_reason") == "max_tokens" else ""
        raise NotStructured(f"upstream {upstream!r} answered a request for structured output (a JSON schema) with "
                            f"{len(text)} characters that are not JSON{cut}: its model cannot do structured output; "
                            "send such requests to a model that can (model_map)") from None
    if not fenced:
        return message
    first, rest = id(texts[0]), {id(block) for block in texts[1:]}
    return dict(message, content=[dict(block, text=fenced.group(1)) if id(block) == first else block
                                  for block in message["content"] if id(block) not in rest])


#: The opening of a JSON fence, as :func:`check_structured` takes it (```json or ```, then a line break).
_JSON_FENCE_OPEN = _LazyPattern(r"\s*```(?:json)?[ \t]*\r?\n")
#: The closing of a fence at the end of the text, and what may still become one (held back till the end).
_JSON_FENCE_CLOSE = _LazyPattern(r"\s*```\s*$")
_MAYBE_FENCE_CLOSE = _LazyPattern(r"[\s`]*$")
#: How much of a text block's start is held to see whether it opens a fence (```json and a line
#: break, with some white space: a longer first line is not a fence's).
_JSON_FENCE_HEAD_CHARS = 64


class UnfencedStream(StreamEncoder):
    """A client's encoder for an answer to a request with a JSON schema, streamed: a text block
    that opens with a JSON fence (```json, as some models write it) reaches ``inner`` without it,
    as :func:`check_structured` gives a whole answer. The start of each text block is held until
    it shows whether a fence opens it (at most _JSON_FENCE_HEAD_CHARS), and in a fenced block the
    white space and backticks at the end of what came, until more text or the block's end shows
    whether they close it. Anything else passes as it is."""

    def __init__(self, inner: StreamEncoder) -> None:
        self.inner = inner
        self._blocks: Dict[Any, Dict[str, Any]] = {}  # text blocks by index: "head" (None once known), "fenced", "held"

    def encode(self, events: List[Event]) -> bytes:
        return self.inner.encode(self._unfenced(events))

    def encode_parts(self, events: List[Event]) -> Iterator[bytes]:
        return self.inner.encode_parts(self._unfenced(events))

    def ping(self) -> bytes:
        return self.inner.ping()

    def error(self, error_type: str, message: str) -> bytes:
        return self.inner.error(error_type, message)

    @staticmethod
    def _text_event(index: Any, text: str) -> Event:
        return Event("content_block_delta", {"type": "content_block_delta", "index": index,
                                             "delta": {"type": "text_delta", "text": text}})

    def _unfenced(self, events: List[Event]) -> List[Event]:
        out: List[Event] = []
        for event in events:
            if event.name not in ("content_block_start", "content_block_delta", "content_block_stop"):
                out.append(event)
                continue
            index = event.data.get("index")
            block = event.data.get("content_block") if isinstance(event.data.get("content_block"), dict) else {}
            delta = event.data.get("delta") if isinstance(event.data.get("delta"), dict) else {}
            if event.name == "content_block_start" and block.get("type") == "text":
                self._blocks[index] = {"head": "", "fenced": False, "held": ""}
                out.append(Event(event.name, dict(event.data, content_block=dict(block, text=""))))
                text = block.get("text") if isinstance(block.get("text"), str) else ""
            elif event.name == "content_block_delta" and index in self._blocks and delta.get("type") == "text_delta" \
                    and isinstance(delta.get("text"), str):
                text = delta["text"]
            elif event.name == "content_block_stop" and index in self._blocks:
                state = self._blocks.pop(index)
                rest = state["head"] if state["head"] is not None else \
                    _JSON_FENCE_CLOSE.sub("", state["held"]) if state["fenced"] else state["held"]
                if rest:
                    out.append(self._text_event(index, rest))
                out.append(event)
                continue
            else:
                out.append(event)
                continue
            shown = self._text(self._blocks[index], text)
            if shown:
                out.append(self._text_event(index, shown))
        return out

    @staticmethod
    def _text(state: Dict[str, Any], text: str) -> str:
        """What of a text block's new ``text`` the client sees now (the rest is held)."""
        if state["head"] is not None:
            head = state["head"] + text
            opening = _JSON_FENCE_OPEN.match(head)
            first = head.lstrip()
            if opening is None and len(head) < _JSON_FENCE_HEAD_CHARS and "\n" not in first \
                    and "```".startswith(first[:3]):
                state["head"] = head  # still may open a fence
                return ""
            state["head"] = None
            if opening is None:
                return head
            state["fenced"] = True
            text = head[opening.end():]
        if not state["fenced"]:
            return text
        held = state["held"] + text
        cut = _MAYBE_FENCE_CLOSE.search(held).start()  # type: ignore[union-attr]
        state["held"] = held[cut:]
        return held[:cut]


def output_schema(body: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The JSON schema a request's answer must follow (structured output), if it asks for one:
    ``output_config.format`` (and the beta's ``output_format``) of type ``json_schema``. The
    client dialects put theirs there (Chat's ``response_format``, Responses' ``text.format``,
    Gemini's ``responseJsonSchema``); a bare "JSON object" is the schema ``{"type": "object"}``."""
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if not isinstance(fmt, dict):
        fmt = body.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        return fmt["schema"]
    return None


#: The schema that stands for "any JSON object" (Chat's ``response_format: json_object``).
ANY_JSON_OBJECT = {"type": "object"}


def _openai_response_format(schema: Dict[str, Any]) -> Dict[str, Any]:
    """Chat Completions' ``response_format`` for a structured-output schema."""
    if schema == ANY_JSON_OBJECT:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


def _openai_user_turn(blocks: List[Any], upstream: str) -> List[Dict[str, Any]]:
    """A user turn as Chat Completions messages: one ``tool`` message per tool result, in order,
    then the user's own content (images a tool returned go with it, since tool messages are text)."""
    messages: List[Dict[str, Any]] = []
    results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
    others = [b for b in blocks if not (isinstance(b, dict) and b.get("type") == "tool_result")]
    late_images: List[Dict[str, Any]] = []
    for result in results:
        inner = _block_list(result.get("content"))
        text = _block_text(inner)
        if result.get("is_error"):
            text = f"Error: {text}" if text else "Error"
        messages.append({"role": "tool", "tool_call_id": result.get("tool_use_id"), "content": text})
        for block in inner:
            if isinstance(block, dict) and block.get("type") == "image":
                image = _image_part(block.get("source") or {})
                if image:
                    late_images.append(image)
    parts = _user_parts(others, upstream)
    if late_images:
        parts = [{"type": "text", "text": "(images returned by the tool calls above)"}] + late_images + parts
    if parts:
        messages.append({"role": "user", "content": _content_value(parts)})
    return messages


def _openai_assistant(blocks: List[Any], options: OpenAIOptions, changes: Dict[str, int]) -> Dict[str, Any]:
    texts, calls, reasoning = [], [], []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"),
                                       "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False)}})
        elif kind == "thinking":
            reasoning.append(str(block.get("thinking", "")))
        elif kind == "redacted_thinking":
            _count(changes, "redacted_thinking_dropped")
    message: Dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        if options.reasoning_history:
            message["reasoning_content"] = "\n".join(reasoning)
        else:
            _count(changes, "thinking_history_dropped")
    if message["content"] is None and not calls:
        message["content"] = ""
    return message


def _token_count(value: Any) -> int:
    """A token count an upstream reported: a non-negative whole number, else 0 (``"many"``,
    ``1e400``, ``-3``, a number past :data:`MAX_UPSTREAM_TOKENS` and the like are noise, not
    worth failing an answer for)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        return 0
    return upstream_count(max(0, int(value))) or 0


def openai_usage(usage: Any) -> Dict[str, int]:
    """Chat Completions usage as Anthropic usage (cached prompt tokens reported as cache reads)."""
    if not isinstance(usage, dict):
        return {}
    prompt = _token_count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details") if isinstance(usage.get("prompt_tokens_details"), dict) else {}
    cached = min(prompt, _token_count(details.get("cached_tokens")))
    return {"input_tokens": prompt - cached, "output_tokens": _token_count(usage.get("completion_tokens")),
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def _stop_reason(choice: Dict[str, Any], stop_sequences: Sequence[str]) -> Tuple[str, Optional[str]]:
    matched = choice.get("stop_reason")  # vLLM names the stop string it hit
    if isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return _FINISH_REASONS.get(str(choice.get("finish_reason") or "stop"), "end_turn"), None


def _stop_sequences(body: Dict[str, Any]) -> List[str]:
    """The request's stop sequences (a translated answer names the one that stopped it)."""
    stops = body.get("stop_sequences")
    return stops if isinstance(stops, list) else []


def _text_or(value: Any, default: str) -> str:
    """``value`` when an upstream sent a non-empty string there, else ``default``."""
    return value if isinstance(value, str) and value else default


def new_tool_id() -> str:
    """A fresh ``toolu_`` id for tool calls a server sent without one."""
    return "toolu_" + os.urandom(12).hex()


def openai_to_anthropic(response: Dict[str, Any], model: str, stop_sequences: Sequence[str] = ()) -> Dict[str, Any]:
    """A Chat Completions answer as an Anthropic Message; :class:`UpstreamFailure` for an answer
    that is not a chat completion."""
    choices = response.get("choices") if isinstance(response, dict) else None
    if not isinstance(choices, list):
        raise UpstreamFailure("upstream answered something that is not a chat completion (no choices list)")
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content: List[Dict[str, Any]] = []
    parts = content_parts(message.get("content")) + content_parts(message.get("refusal"))
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    thinking = (reasoning if isinstance(reasoning, str) else "") + "".join(t for k, t in parts if k == "thinking")
    if thinking:
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    text = "".join(t for k, t in parts if k == "text")
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise UpstreamFailure("upstream sent a tool call without a function object")
        name, arguments = function.get("name"), function.get("arguments")
        if not isinstance(arguments, (dict, str)):
            arguments = "" if arguments is None else json.dumps(arguments)
        content.append({"type": "tool_use", "id": _text_or(call.get("id"), "") or new_tool_id(),
                        "name": _text_or(name, "unknown_tool"),
                        "input": arguments if isinstance(arguments, dict) else parse_tool_arguments(arguments)})
    stop_reason, stop_sequence = _stop_reason(choice, stop_sequences)
    if calls and stop_reason == "end_turn":
        stop_reason = "tool_use"  # some servers say "stop" after tool calls
    return {"id": new_message_id(), "type": "message",
            "role": "assistant", "model": model, "content": content, "stop_reason": stop_reason,
            "stop_sequence": stop_sequence, "usage": openai_usage(response.get("usage")) or
            {"input_tokens": 0, "output_tokens": 0}}


def content_parts(content: Any) -> List[Tuple[str, str]]:
    """A message's or delta's ``content`` (or ``refusal``) as ("text" | "thinking", text) pieces:
    a string is text; a list of typed parts (Mistral) gives its ``text`` parts and its ``thinking``
    parts (a string or a list of text parts)."""
    if isinstance(content, str):
        return [("text", content)] if content else []
    pieces: List[Tuple[str, str]] = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str) and part["text"]:
            pieces.append(("text", part["text"]))
        elif part.get("type") == "thinking":
            inner = part.get("thinking")
            text = inner if isinstance(inner, str) else "".join(t for _, t in content_parts(inner))
            if text:
                pieces.append(("thinking", text))
    return pieces


def openai_error_event(payload: Dict[str, Any]) -> Event:
    """An error a server sent inside its stream, as an Anthropic ``error`` event."""
    error = payload.get("error")
    message = error.get("message") if isinstance(error, dict) else error
    code = error.get("code") if isinstance(error, dict) else None
    status = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599 else 500
    error = {"type": error_type_for_status(status), "message": str(message or "upstream error")}
    return Event("error", upstream_error_event(error))


class _JsonEnd:
    """Tells, fragment by fragment, when a JSON value is complete (depth back to zero), in O(n)."""

    def __init__(self) -> None:
        self.depth = 0
        self.began = False
        self.in_string = False
        self.escaped = False

    def feed(self, text: str) -> bool:
        for char in text:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
                self.began = True
            elif char in "}]":
                self.depth -= 1
        return self.began and self.depth <= 0 and not self.in_string


#: Fragments that may wait behind a tool call whose arguments are still incomplete; real servers
#: interleave a handful at most.
_MAX_WAITING_FRAGMENTS = 1000


#: The delta type and field of a text fragment, by the fragment's kind.
_TEXT_DELTA = {"text": ("text_delta", "text"), "thinking": ("thinking_delta", "thinking")}


class OpenAIStreamTranslator:
    """Chat Completions chunks in, the exact Anthropic event grammar out.

    ``feed()`` a parsed chunk, get :class:`Event` objects; ``finish()`` closes the message. Blocks get
    increasing indices and are started and stopped once; reasoning becomes ``thinking_delta``, text
    ``text_delta``, tool-call arguments ``input_json_delta`` as each fragment arrives. Tool calls are
    told apart by ``index`` (or by id when a server leaves the index out); a name that arrives after
    the first arguments is waited for. While a tool call's arguments are still incomplete, anything
    else that arrives (text, another call) waits its turn, so nothing is lost or misplaced.
    """

    def __init__(self, model: str, input_tokens: int = 0, stop_sequences: Sequence[str] = (),
                 on_upstream_id: Optional[Callable[[str], None]] = None,
                 usage: Optional[Dict[str, Any]] = None) -> None:
        self.model = model
        self.input_tokens = input_tokens
        #: the usage the events have said so far (message_start's, then message_delta's), kept in the
        #: caller's dict where it gives one
        self.usage: Dict[str, Any] = usage if usage is not None else {}
        #: its events go to a client as they come (not into one Message): deltas are encoded at once
        self.relayed = False
        self.stop_sequences = list(stop_sequences)
        self.on_upstream_id = on_upstream_id  # told the server's own id for the answer, if it gave one
        self.started = False
        self.finished = False
        self.saw_finish = False
        self._index = -1
        self._open: Optional[str] = None  # "text", "thinking" or "tool:<key>"
        self._calls: Dict[str, Dict[str, Any]] = {}
        self._order: List[str] = []
        self._by_index: Dict[int, str] = {}  # each index's current call
        self._ids: Dict[str, str] = {}  # each call id's call
        self._waiting: List[Tuple[str, Any]] = []
        self._stop_reason = "end_turn"
        self._stop_sequence: Optional[str] = None
        self._usage: Dict[str, int] = {}
        self._tool_seen = False
        self._run = DeltaRun()

    def _start(self, out: List[Event], upstream_id: Any) -> None:
        if self.started:
            return
        self.started = True
        _tell_upstream_id(self.on_upstream_id, upstream_id)
        message = {"id": new_message_id(), "type": "message", "role": "assistant",
                   "model": self.model, "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": self.input_tokens, "output_tokens": 1}}
        self.usage.update(message["usage"])
        out.append(Event("message_start", {"type": "message_start", "message": message}))

    def _close(self, out: List[Event]) -> None:
        if self._open is not None:
            out.append(Event("content_block_stop", {"type": "content_block_stop", "index": self._index}))
            if self._open.startswith("tool:"):
                self._calls[self._open[5:]]["closed"] = True
            self._open = None

    def _open_block(self, out: List[Event], kind: str, block: Dict[str, Any]) -> None:
        self._close(out)
        self._index += 1
        self._open = kind
        out.append(Event("content_block_start", {"type": "content_block_start", "index": self._index,
                                                           "content_block": block}))

    def _delta(self, out: List[Event], kind: str, field: str, text: str) -> None:
        # relayed, a delta is encoded now and kept as bytes alone (see Event): the bulk of a stream;
        # a read's run of deltas to one block goes out as one event (DeltaRun)
        self._run.add(out, self._index, kind, field, text, self.relayed)

    def feed(self, chunk: Dict[str, Any]) -> List[Event]:
        """Events for one parsed chunk (an ``error`` chunk gives an error event and ends the stream)."""
        out: List[Event] = []
        self.feed_into(out, chunk)
        self._run.end_read()
        return out

    def end_read(self) -> None:
        """The events of a read are all in the list :meth:`feed_into` was given: its run of deltas
        is written as one event (call it before the list goes out)."""
        self._run.end_read()

    def feed_into(self, out: List[Event], chunk: Dict[str, Any]) -> None:
        """:meth:`feed`, its events added to ``out`` (a stream's reader gathers a read's events in one list,
        then calls :meth:`end_read`). Each key is read once and the absent ones tested against None
        first: this runs for every chunk."""
        if self.finished:
            return
        choices = chunk.get("choices")
        if "error" in chunk and not choices and not self.saw_finish:  # (after the answer's end it is no part of it)
            self.finished = True
            self._start(out, None)
            out.append(openai_error_event(chunk))
            return
        if choices is None:
            choices = ()
        elif not isinstance(choices, list):
            raise UpstreamFailure("upstream sent a chunk whose choices is not a list")
        if not self.started:
            self._start(out, chunk.get("id"))
        usage = chunk.get("usage")
        if usage is not None and isinstance(usage, dict):
            self._usage = openai_usage(usage)
        for choice in choices:
            if not isinstance(choice, dict) or (choice.get("index") or 0) != 0:
                continue
            if self.saw_finish:
                break  # the answer has ended (its finish_reason came): a later chunk's text is no part of it
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = {}
            content = delta.get("content")
            if len(delta) == 1 and type(content) is str and self._open == "text" and not self._waiting:
                if content:  # the usual chunk: more of the open text block, nothing waiting (as _take would)
                    self._run.add(out, self._index, "text_delta", "text", content, self.relayed)
            else:
                self._take_delta(out, delta, content)
            if choice.get("finish_reason"):
                self.saw_finish = True
                self._stop_reason, self._stop_sequence = _stop_reason(choice, self.stop_sequences)

    def _take_delta(self, out: List[Event], delta: Dict[str, Any], content: Any) -> None:
        """A choice's delta (``content`` its content), fragment by fragment: reasoning, content,
        refusal, tool calls."""
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self._take(out, ("thinking", reasoning))
        for kind, text in content_parts(content):
            self._take(out, (kind, text))
        refusal = delta.get("refusal")
        for kind, text in content_parts(refusal) if refusal else ():
            self._take(out, (kind, text))
        calls = delta.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise UpstreamFailure("upstream sent a chunk whose tool_calls is not a list")
        for call in calls or []:
            if isinstance(call, dict):
                self._take(out, ("tool", self._call_key(call), call))

    def _call_key(self, call: Dict[str, Any]) -> str:
        """Which call a tool-call fragment belongs to. By ``index``, except that a new id at an
        index starts a new call (Ollama and SGLang send back-to-back calls all at index 0); without
        an index, by id, else (``id: ""``, no index: later fragments of Qwen's calls) the last call."""
        index, call_id = call.get("index"), _text_or(call.get("id"), "")[:200]
        if isinstance(index, int) and not isinstance(index, bool):
            key = self._by_index.get(index)
            state = self._calls.get(key) if key is not None else None
            if state is None or (call_id and state["id"] and call_id != state["id"]):
                key = self._by_index[index] = self._ids.get(call_id) or f"c{len(self._calls)}"
        elif call_id and call_id in self._ids:
            key = self._ids[call_id]
        elif call_id or not self._order:
            key = f"c{len(self._calls)}"
        else:
            key = self._order[-1]
        if key not in self._calls:
            self._calls[key] = {"id": call_id or None, "name": None, "pending": [], "started": False,
                                "closed": False, "end": _JsonEnd(), "complete": False}
            self._order.append(key)
        if call_id:
            self._ids.setdefault(call_id, key)
        return key

    def _blocking(self, fragment: Tuple[Any, ...]) -> bool:
        """True while the open tool call's arguments are incomplete and ``fragment`` is not part of it."""
        if self._open is None or not self._open.startswith("tool:"):
            return False
        if fragment[0] == "tool" and f"tool:{fragment[1]}" == self._open:
            return False
        return not self._calls[self._open[5:]]["complete"]

    def _take(self, out: List[Event], fragment: Tuple[Any, ...]) -> None:
        ongoing = fragment[0] == "tool" and self._open == f"tool:{fragment[1]}"
        if not ongoing and (self._waiting or self._blocking(fragment)):
            self._waiting.append(fragment)
            if len(self._waiting) > _MAX_WAITING_FRAGMENTS and self._open and self._open.startswith("tool:"):
                # a call whose arguments never complete must not hold everything else (nor cost
                # quadratic time): it is taken as complete, as at the end of the stream
                self._calls[self._open[5:]]["complete"] = True
                self._release(out)
            return
        self._apply(out, fragment)
        self._release(out)

    def _apply(self, out: List[Event], fragment: Tuple[Any, ...]) -> None:
        kind = fragment[0]
        if kind in ("thinking", "text"):
            if self._open != kind:
                block = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" \
                    else {"type": "text", "text": ""}
                self._open_block(out, kind, block)
            self._delta(out, *_TEXT_DELTA[kind], fragment[1])
            return
        key, call = fragment[1], fragment[2]
        state = self._calls[key]
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        if not state["id"]:
            state["id"] = _text_or(call.get("id"), "") or None
        if not state["name"]:
            state["name"] = _text_or(function.get("name"), "") or None
        arguments = function.get("arguments")
        if isinstance(arguments, dict):
            arguments = json.dumps(arguments)
        if isinstance(arguments, str) and arguments:
            state["pending"].append(arguments)
        if not state["started"] and state["name"] and not state["closed"]:
            state["started"] = True
            self._tool_seen = True
            self._open_block(out, f"tool:{key}", {"type": "tool_use", "id": state["id"] or new_tool_id(),
                                                  "name": state["name"], "input": {}})
        if state["started"] and self._open == f"tool:{key}" and state["pending"]:
            text = "".join(state["pending"])
            state["pending"] = []
            self._delta(out, "input_json_delta", "partial_json", text)
            if state["end"].feed(text):
                state["complete"] = True

    def _release(self, out: List[Event]) -> None:
        """Apply what waited: first the open call's own later fragments, then, once it is complete,
        the rest in arrival order."""
        while self._waiting:
            ongoing = next((i for i, f in enumerate(self._waiting)
                            if f[0] == "tool" and self._open == f"tool:{f[1]}"), None)
            if ongoing is not None:
                self._apply(out, self._waiting.pop(ongoing))
            elif not self._blocking(self._waiting[0]):
                self._apply(out, self._waiting.pop(0))
            else:
                return

    def finish(self) -> List[Event]:
        """The closing events: whatever still waits, the last block's stop, message_delta, message_stop."""
        out: List[Event] = []
        if self.finished:
            return out
        self._start(out, None)
        while self._waiting:
            if self._open and self._open.startswith("tool:"):
                self._calls[self._open[5:]]["complete"] = True  # the stream is over: it is as complete as it gets
            self._release(out)
        for key in self._order:
            state = self._calls[key]
            if not state["started"]:
                state["started"] = True
                self._tool_seen = True
                self._open_block(out, f"tool:{key}", {"type": "tool_use", "id": state["id"] or new_tool_id(),
                                                      "name": state["name"] or "unknown_tool", "input": {}})
            if state["pending"] and self._open == f"tool:{key}":
                self._delta(out, "input_json_delta", "partial_json", "".join(state["pending"]))
                state["pending"] = []
        self._close(out)
        stop_reason = "tool_use" if self._tool_seen and self._stop_reason == "end_turn" else self._stop_reason
        usage = dict(self._usage) if self._usage else {"output_tokens": 0}
        self.usage.update(usage)
        out.append(Event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": self._stop_sequence},
            "usage": usage}))
        out.append(Event("message_stop", {"type": "message_stop"}))
        self.finished = True
        self._run.end_read()
        return out


# -- Anthropic Messages <-> Gemini generateContent --------------------------------------------
#
# A Gemini answer carries thought signatures that Gemini checks on the next request: on the
# first functionCall part of every model turn since the user last wrote. Claude Code sends back
# only what it got, in Anthropic shape, so each signature rides in the answer as a thinking
# block's ``signature`` that says where it belongs: ``gemini:thought:`` on a thought's own block,
# ``gemini:call:`` on an empty block right before the tool_use it came with. On the way back each
# goes onto its part again. The signature Gemini puts at the end of an answer without calls is
# not carried: Gemini does not check it, and an answer that ends in a thinking block prints
# nothing in Claude Code (``claude -p`` shows the last block).

#: The prefix of every thinking signature that carries a Gemini thought signature.
GEMINI_SIGNATURE_PREFIX = "gemini:"
#: What Gemini documents to send for a function call whose signature was lost (a history made
#: elsewhere, a compaction, a model switch): the call is accepted without one.
GEMINI_SKIP_SIGNATURE = "skip_thought_signature_validator"
#: The schema keys Gemini's function ``parameters`` take (an OpenAPI subset); any other is a 400.
_GEMINI_SCHEMA_KEYS = frozenset((
    "type", "format", "title", "description", "nullable", "enum", "items", "minItems", "maxItems", "properties",
    "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "minimum", "maximum",
    "default", "example", "anyOf", "propertyOrdering"))
#: The plain keys a Gemini schema keeps, each with the JSON types its value may have.
_GEMINI_SCHEMA_VALUES = (
    ("title", (str,)), ("description", (str,)), ("pattern", (str,)), ("minItems", (int,)), ("maxItems", (int,)),
    ("minProperties", (int,)), ("maxProperties", (int,)), ("minLength", (int,)), ("maxLength", (int,)),
    ("minimum", (int, float)), ("maximum", (int, float)), ("nullable", (bool,)),
    ("default", (str, int, float, bool)), ("example", (str, int, float, bool)))
_GEMINI_TYPES = frozenset(("string", "number", "integer", "boolean", "array", "object"))
#: Keys that say something of one type only: of a type list's alternatives, only that type's has them.
_KIND_ONLY_KEYS = {"items": "array", "prefixItems": "array", "minItems": "array", "maxItems": "array",
                   "properties": "object", "required": "object", "additionalProperties": "object",
                   "minProperties": "object", "maxProperties": "object", "minLength": "string",
                   "maxLength": "string", "pattern": "string"}
#: The formats Gemini takes, by type; any other moves into the description.
_GEMINI_FORMATS = {"string": ("enum", "date-time"), "integer": ("int32", "int64"), "number": ("float", "double")}
#: Constraints Gemini has no key for: said in the description, so the model still knows them.
_SCHEMA_CONSTRAINTS = ("exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems", "minContains",
                       "maxContains", "contentEncoding", "contentMediaType")
#: How deep a schema (and the ``$ref`` chains in it) is followed, and how many nodes one tool's
#: converted schema may have; past either, the rest is described as a plain object.
_MAX_SCHEMA_DEPTH = 24
_MAX_SCHEMA_NODES = 2000
#: Gemini's longest output; a larger ``max_tokens`` (Claude Code asks up to 128k) is sent as this.
GEMINI_MAX_OUTPUT_TOKENS = 65536
#: Gemini's ``finishReason`` values that mean the answer was withheld for its content.
_GEMINI_REFUSALS = frozenset(("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                              "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "LANGUAGE"))
#: ... and those that mean the model failed to form a tool call: an error, worth a retry.
_GEMINI_CALL_FAILURES = frozenset(("MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS",
                                   "MISSING_THOUGHT_SIGNATURE", "MALFORMED_RESPONSE"))
_GEMINI_ID = _LazyPattern(r"[A-Za-z0-9_-]{1,128}")


def gemini_schema(schema: Any) -> Optional[Dict[str, Any]]:
    """A tool's JSON schema in the OpenAPI subset Gemini's ``parameters`` take, or None for a
    tool with no parameters (an object with no properties is a 400 there).

    Converted, not stripped: ``$ref`` resolved, ``const`` a one-value enum, ``["string", "null"]``
    a nullable string, ``oneOf`` an ``anyOf``, ``allOf`` and a lone alternative merged; what has
    no Gemini key (``exclusiveMinimum``, an unsupported ``format``, ...) is said in the
    description. Gemini takes only an object as ``parameters``: alternatives that are all objects
    become one (every property, required only where all require it); any other root, none.
    """
    if not isinstance(schema, dict):
        return None
    walk = _SchemaWalk()
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            walk.definitions.update({f"#/{key}/{name}": value for name, value in schema[key].items()})
    converted = _gemini_schema_node(schema, walk, 0)
    if converted.get("type") != "object":
        converted = _one_object(converted)
    if converted is None or not converted.get("properties"):
        return None
    return converted


def _one_object(converted: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Converted alternatives that are all objects as one object (a root must be an object):
    every member's properties (the first of each name), required where every member requires it;
    None for anything else."""
    members = converted.get("anyOf") or []
    if not members or any(m.get("type") != "object" for m in members):
        return None
    properties: Dict[str, Any] = {}
    for member in members:
        for name, value in (member.get("properties") or {}).items():
            properties.setdefault(name, value)
    required = [r for r in members[0].get("required") or [] if all(r in (m.get("required") or []) for m in members)]
    merged = {"type": "object", "properties": properties, **({"required": required} if required else {})}
    said = converted.get("description")
    note = f"(takes one of {len(members)} shapes; their properties are listed together)"
    merged["description"] = f"{said} {note}" if said else note
    return merged


class _SchemaWalk:
    """What a schema's conversion carries along: its definitions, the ``$ref`` chain being
    expanded (a definition met again inside itself is not expanded again) and the nodes it may
    still write (a definition used at many places is copied to each: bounded, not exponential)."""

    def __init__(self) -> None:
        self.definitions: Dict[str, Any] = {}
        self.expanding: List[str] = []
        self.budget = _MAX_SCHEMA_NODES


def _gemini_schema_node(node: Any, walk: _SchemaWalk, depth: int) -> Dict[str, Any]:
    """One JSON Schema node as a Gemini schema: its ``$ref`` resolved, ``allOf`` and a lone
    alternative merged into it, then its types, enum, plain values and children, in that order;
    what Gemini has no key for is said in its description."""
    walk.budget -= 1
    if not isinstance(node, dict):
        return {"type": "string", "description": "(any JSON value, written as text)"}
    if depth > _MAX_SCHEMA_DEPTH or walk.budget < 0:
        return {"type": "object", "description": "(too deep or too large to describe here)"}
    if isinstance(node.get("$ref"), str):
        return _gemini_schema_ref(node, walk, depth)
    node = _merge_all_of(node)
    lone = _lone_alternative(node)
    if lone is not None:  # the node and its one alternative, as one node (it keeps its own type)
        return _gemini_schema_node(lone, walk, depth + 1)
    if "const" in node:
        node = dict(node, enum=[node["const"]])
    notes: List[str] = []
    out, kind = _gemini_schema_types(node, walk, depth)
    if isinstance(node.get("type"), list) and "anyOf" in out:
        return out  # each kind's alternative carries the node's keys for it
    kind = _gemini_schema_enum(node, out, kind, notes)
    if kind is None and "anyOf" not in out and "type" not in out:
        if isinstance(node.get("properties"), dict):
            kind = "object"
        elif "items" in node:
            kind = "array"
        else:
            kind = "string"
            if "type" not in node and "enum" not in out:
                notes.append("any JSON value, written as text")
    if kind:
        out["type"] = kind
    _gemini_schema_values(node, out, kind, notes)
    if kind == "object" and "properties" not in out:
        _gemini_schema_properties(node, out, walk, depth, notes)
    elif kind == "array" and "items" not in out:
        items = node.get("items")
        if isinstance(items, list):  # a tuple schema: its first item stands for all
            items = items[0] if items else None
        out["items"] = _gemini_schema_node(items, walk, depth + 1)
    if notes:
        said = out.get("description")
        out["description"] = (f"{said} " if said else "") + f"({'; '.join(notes)})"
    return out


def _gemini_schema_ref(node: Dict[str, Any], walk: _SchemaWalk, depth: int) -> Dict[str, Any]:
    """A ``$ref`` node, resolved in place once per chain (a definition met again inside itself is
    described, not expanded); the node's own keys override the definition's."""
    ref = node["$ref"]
    if ref in walk.expanding:
        return {"type": "object", "description": f"(the same shape as {ref.rsplit('/', 1)[-1]} above)"}
    target = walk.definitions.get(ref)
    merged = dict(target) if isinstance(target, dict) else {"type": "object"}
    merged.update({k: v for k, v in node.items() if k != "$ref"})
    walk.expanding.append(ref)
    try:
        return _gemini_schema_node(merged, walk, depth + 1)
    finally:
        walk.expanding.pop()


def _lone_alternative(node: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """A node whose ``anyOf``/``oneOf`` has one member (beside a ``null``) is that member and the
    node at once: merged as ``allOf`` is, so that the node keeps its own type and properties (a
    root ``{"type": "object", "anyOf": [{"required": [...]}]}`` stays an object). None otherwise."""
    alternatives = node.get("anyOf") if isinstance(node.get("anyOf"), list) else node.get("oneOf")
    if not isinstance(alternatives, list) or isinstance(node.get("type"), list):
        return None
    members = [a for a in alternatives if not (isinstance(a, dict) and a.get("type") == "null")]
    if len(members) != 1 or not isinstance(members[0], dict):
        return None
    rest = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
    if len(members) < len(alternatives):
        rest["nullable"] = True
    return _merge_all_of(dict(rest, allOf=members))


def _gemini_schema_types(node: Dict[str, Any], walk: _SchemaWalk, depth: int) -> Tuple[Dict[str, Any],
                                                                                     Optional[str]]:
    """The node's type (None: not yet known), and ``nullable`` and ``anyOf`` for a type list or
    alternatives. A type list of several kinds becomes one alternative per kind, each with the
    node's keys for it (an array's ``items``: Gemini refuses an array without them)."""
    out: Dict[str, Any] = {}
    kind = node.get("type")
    if isinstance(kind, list):  # ["string", "null"], ["string", "array"]
        kinds = list(dict.fromkeys(k for k in kind if isinstance(k, str) and k in _GEMINI_TYPES))
        if "null" in kind:
            out["nullable"] = True
        if len(kinds) > 1:
            shared = {k: v for k, v in node.items() if k not in ("type", "anyOf", "oneOf", "description", "title",
                                                                 "nullable")}
            out["anyOf"] = [_gemini_schema_node(dict({k: v for k, v in shared.items() if _KIND_ONLY_KEYS.get(k, one)
                                                      == one}, type=one), walk, depth + 1) for one in kinds]
            out.update({k: node[k] for k in ("title", "description") if isinstance(node.get(k), str)})
        return out, (kinds[0] if len(kinds) == 1 else None)
    if kind == "null":
        out["nullable"] = True
        kind = None
    elif not (isinstance(kind, str) and kind in _GEMINI_TYPES):
        kind = None
    alternatives = node.get("anyOf") if isinstance(node.get("anyOf"), list) else node.get("oneOf")
    if isinstance(alternatives, list):
        members = [a for a in alternatives if not (isinstance(a, dict) and a.get("type") == "null")]
        if len(members) < len(alternatives):
            out["nullable"] = True
        converted = [_gemini_schema_node(a, walk, depth + 1) for a in members]
        if converted:
            out["anyOf"] = converted
    return out, kind


def _gemini_schema_enum(node: Dict[str, Any], out: Dict[str, Any], kind: Optional[str],
                        notes: List[str]) -> Optional[str]:
    """A string ``enum`` kept (its empty value said in the description: Gemini refuses it); any
    other enum said in the description. Returns the node's type, ``string`` for a kept enum."""
    enum = node.get("enum")
    if not isinstance(enum, list) or not enum:
        return kind
    if all(isinstance(v, str) for v in enum) and kind in (None, "string"):
        values = [v for v in enum if v]
        if values:
            out["enum"], kind = values, "string"
        if len(values) < len(enum):
            notes.append("may also be empty")
    else:
        notes.append("one of: " + ", ".join(json.dumps(v, ensure_ascii=False) for v in enum[:50]))
    return kind


def _gemini_schema_values(node: Dict[str, Any], out: Dict[str, Any], kind: Optional[str], notes: List[str]) -> None:
    """The plain keys Gemini takes, an example, a format it knows for the type; the constraints it
    has no key for go into ``notes``."""
    for key, types in _GEMINI_SCHEMA_VALUES:
        value = node.get(key)
        if key not in out and isinstance(value, types) and (bool in types or not isinstance(value, bool)):
            out[key] = value
    examples = node.get("examples")
    if "example" not in out and isinstance(examples, list) and examples and isinstance(examples[0], (str, int, float)):
        out["example"] = examples[0]
    fmt = node.get("format")
    if isinstance(fmt, str):
        if fmt in _GEMINI_FORMATS.get(str(kind), ()):
            out["format"] = fmt
        else:
            notes.append(f"format: {fmt}")
    for key in _SCHEMA_CONSTRAINTS:
        if isinstance(node.get(key), (str, int, float, bool)):
            notes.append(f"{key}: {json.dumps(node[key])}")


def _gemini_schema_properties(node: Dict[str, Any], out: Dict[str, Any], walk: _SchemaWalk, depth: int,
                              notes: List[str]) -> None:
    """An object's properties and the required ones among them (a required name that is not a
    property is a 400); a map (``additionalProperties`` only) is said in the description."""
    properties = node.get("properties") if isinstance(node.get("properties"), dict) else {}
    if properties:
        out["properties"] = {str(name): _gemini_schema_node(value, walk, depth + 1)
                             for name, value in properties.items()}
        required = node.get("required")
        named = [r for r in required if isinstance(r, str) and r in properties] if isinstance(required, list) else []
        if named:
            out["required"] = list(dict.fromkeys(named))
    elif isinstance(node.get("additionalProperties"), dict):
        notes.append("an object of named values")


def _merge_all_of(node: Dict[str, Any]) -> Dict[str, Any]:
    """``allOf`` folded into the node: properties and required joined, the first of anything else."""
    parts = node.get("allOf")
    if not isinstance(parts, list):
        return node
    merged = {k: v for k, v in node.items() if k != "allOf"}
    for part in parts:
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                merged["properties"] = dict(merged.get("properties") or {}, **value)
            elif key == "required" and isinstance(value, list):
                merged["required"] = list(merged.get("required") or []) + value
            else:
                merged.setdefault(key, value)
    return merged


def gemini_thinking_config(body: Dict[str, Any], model: str) -> Optional[Dict[str, Any]]:
    """``generationConfig.thinkingConfig`` for the request's ``thinking`` and ``output_config.effort``:
    a ``thinkingLevel`` for Gemini 3 and later, a ``thinkingBudget`` for older models, never both
    (that is a 400); ``includeThoughts`` so the thinking streams back. None: the model's default."""
    thinking = body.get("thinking") if isinstance(body.get("thinking"), dict) else {}
    output_config = body.get("output_config") if isinstance(body.get("output_config"), dict) else {}
    effort = output_config.get("effort") if isinstance(output_config.get("effort"), str) else None
    kind = thinking.get("type")
    if kind not in ("enabled", "adaptive") and effort is None:
        return None
    # Claude Code asks for thinking whose text it will not show (display: omitted): none comes back
    shown = kind in ("enabled", "adaptive") and thinking.get("display") != "omitted"
    config: Dict[str, Any] = {"includeThoughts": shown}
    budget = thinking.get("budget_tokens") if _is_int(thinking.get("budget_tokens")) else None
    match = re.match(r"(?:models/)?gemini-(\d+)", model)
    if match and int(match.group(1)) >= 3:
        if effort is not None:
            config["thinkingLevel"] = "low" if effort == "low" else "high"
        else:
            config["thinkingLevel"] = "low" if budget is not None and budget < 4096 else "high"
    elif budget is not None or effort is not None:
        budget = budget if budget is not None else {"low": 2048, "medium": 8192}.get(str(effort), 24576)
        config["thinkingBudget"] = max(128, min(budget, 24576))
    else:
        config["thinkingBudget"] = -1  # adaptive: the model decides
    return config


def _gemini_tools(body: Dict[str, Any], model: str, changes: Dict[str, int]) -> Tuple[List[Dict[str, Any]],
                                                                                     List[str]]:
    """The request's tools as Gemini ``tools`` and the function names offered."""
    declarations: List[Dict[str, Any]] = []
    search = False
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        kind = str(tool.get("type") or "")
        if kind not in ("", "custom"):
            if kind.startswith("web_search"):
                search = True
                continue
            equivalent = _TYPED_TOOL_FUNCTIONS.get(str(tool.get("name")))
            if equivalent is None:
                _count(changes, "server_tool_dropped")
                continue
            schema, description = equivalent["parameters"], equivalent["description"]
            _count(changes, "typed_tool_as_function")
        else:
            schema, description = tool.get("input_schema"), tool.get("description")
        declaration: Dict[str, Any] = {"name": gemini_function_name(str(tool.get("name")))}
        if isinstance(description, str) and description:
            declaration["description"] = description
        parameters = gemini_schema(schema)
        if parameters is not None:
            declaration["parameters"] = parameters
        declarations.append(declaration)
    tools: List[Dict[str, Any]] = []
    if declarations:
        tools.append({"functionDeclarations": declarations})
    if search:
        if declarations or not model.split("/")[-1].startswith("gemini-"):
            _count(changes, "web_search_dropped")  # Gemini searches only when no functions are offered
        else:
            tools.append({"googleSearch": {}})
            _count(changes, "web_search_as_google_search")
    return tools, [d["name"] for d in declarations]


_GEMINI_NAME = _LazyPattern(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")


def gemini_function_name(name: str) -> str:
    """A tool's name as a Gemini function name (a letter or ``_`` first, at most 64 characters of
    letters, digits, ``_.:-``): itself where it is one, else the same made valid and marked with
    a short hash of the original; the same name always gives the same result, and
    :func:`gemini_name_map` leads back."""
    if _GEMINI_NAME.fullmatch(name):
        return name
    valid = re.sub(r"[^A-Za-z0-9_.:-]", "_", name)
    if not re.match(r"[A-Za-z_]", valid):
        valid = "_" + valid
    mark = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{valid[:55]}_{mark}"  # the mark keeps two changed names (and a tool named like one) apart


def gemini_name_map(body: Dict[str, Any]) -> Dict[str, str]:
    """The request's tool names Gemini knows by another name, by that name (for its answer)."""
    names = {str(t.get("name")) for t in body.get("tools") or [] if isinstance(t, dict) and t.get("name")}
    return {gemini_function_name(n): n for n in names if gemini_function_name(n) != n}


def _gemini_tool_config(choice: Any, names: Sequence[str]) -> Optional[Dict[str, Any]]:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "any":
        return {"functionCallingConfig": {"mode": "ANY"}}
    if kind == "none":
        return {"functionCallingConfig": {"mode": "NONE"}}
    if kind == "tool":
        name = gemini_function_name(str(choice.get("name")))
        if name not in names:
            raise InvalidRequest(f"tool_choice names {choice.get('name')!r}, a tool this upstream cannot offer "
                                 "(Anthropic server tools have no Gemini equivalent)")
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    return None


def _gemini_media(source: Dict[str, Any], default_type: str) -> Optional[Dict[str, Any]]:
    """An image or document source as an ``inlineData`` or ``fileData`` part."""
    if source.get("type") == "base64" and isinstance(source.get("data"), str) and source["data"]:
        return {"inlineData": {"mimeType": str(source.get("media_type") or default_type), "data": source["data"]}}
    if source.get("type") == "url" and isinstance(source.get("url"), str) and source["url"]:
        import mimetypes  # here, not at the top: only an image by URL to Gemini needs it (~0.5 MB at start-up)

        guessed = mimetypes.guess_type(urllib.parse.urlsplit(source["url"]).path)[0]
        return {"fileData": {"mimeType": guessed or default_type, "fileUri": source["url"]}}
    return None


def _gemini_user_parts(blocks: List[Any]) -> List[Dict[str, Any]]:
    """User content blocks (no tool results) as Gemini parts; none empty."""
    parts: List[Dict[str, Any]] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        source = block.get("source") if isinstance(block.get("source"), dict) else {}
        if kind == "text" and str(block.get("text") or ""):
            parts.append({"text": str(block["text"])})
        elif kind == "image":
            media = _gemini_media(source, "image/png")
            if media:
                parts.append(media)
        elif kind == "document":
            text = document_text(block)
            media = _gemini_media(source, "application/pdf") if text is None else None
            if text or media:
                parts.append({"text": text} if text else media)
    return parts


def _signature_of(block: Dict[str, Any]) -> Tuple[str, str]:
    """A thinking block's Gemini signature as (where it belongs, the signature), or ("", "")."""
    signature = block.get("signature")
    if not isinstance(signature, str) or not signature.startswith(GEMINI_SIGNATURE_PREFIX):
        return "", ""
    place, _, value = signature[len(GEMINI_SIGNATURE_PREFIX):].partition(":")
    return (place, value) if place in ("thought", "call") and value else ("", "")


class GeminiHistory:
    """Builds Gemini ``contents`` from Anthropic messages, keeping Gemini's rules: each model turn
    answered by exactly its calls' responses, in order, in the next turn; consecutive turns of one
    role merged; never an empty part.

    One assistant message can hold several Gemini answers: Claude Code gathers the steps of a tool
    loop into one message (``[text, call, call, call]``) and their results into the next. A Gemini
    answer ends with its calls, so an assistant message is cut into steps after each run of calls
    (and before a call that carries a signature of its own), and the tool results are given back
    to the step whose calls they answer, so that every signature is again on the first call of
    the answer it came with."""

    def __init__(self, trusted: Callable[[str], bool], call_signature: Callable[[str], Optional[str]],
                 changes: Dict[str, int]) -> None:
        self.trusted = trusted
        self.call_signature = call_signature
        self.changes = changes
        self.contents: List[Dict[str, Any]] = []
        self._steps: List[Tuple[List[Dict[str, Any]], List[Tuple[str, str]]]] = []  # awaiting their results

    def add(self, role: Any, content: Any) -> None:
        """Take the next message."""
        blocks = _block_list(content)
        if role == "assistant":  # consecutive assistant messages are one model turn to Gemini
            self._steps += self._model_steps(blocks)
        elif role == "system":
            self._flush(None)
            text = _block_text(blocks)
            self._add("user", [{"text": text}] if text else [])
        else:
            self._flush(blocks)

    def finish(self) -> List[Dict[str, Any]]:
        """The contents, with the last model turns added."""
        self._flush(None)
        return self.contents

    def _add(self, role: str, parts: List[Dict[str, Any]]) -> None:
        if not parts:
            return
        if self.contents and self.contents[-1]["role"] == role:
            self.contents[-1]["parts"] += parts
            _count(self.changes, "turns_merged")
        else:
            self.contents.append({"role": role, "parts": parts})

    def _flush(self, user_blocks: Optional[List[Any]]) -> None:
        """Add the model steps waiting for their results, each followed by the responses to its calls
        (from ``user_blocks``, the user message after them, or saying none came); then that user
        message's own parts."""
        steps, self._steps = self._steps, []
        results = {str(b.get("tool_use_id")): b for b in user_blocks or []
                   if isinstance(b, dict) and b.get("type") == "tool_result"}
        last: List[Dict[str, Any]] = []
        for number, (parts, calls) in enumerate(steps):
            self._add("model", parts)
            responses = self._responses(calls, results) if calls else []
            if number < len(steps) - 1 or user_blocks is None:
                self._add("user", responses)
            else:
                last = responses
        if user_blocks is None:
            return
        words = [{"text": f"[result of tool call {tid}: {_block_text(r.get('content')) or '(empty)'}]"}
                 for tid, r in results.items()]
        _count(self.changes, "orphan_tool_result_as_text", len(words))
        others = [b for b in user_blocks if not (isinstance(b, dict) and b.get("type") == "tool_result")]
        self._add("user", last + words + _gemini_user_parts(others))

    def _responses(self, calls: List[Tuple[str, str]], results: Dict[str, Any]) -> List[Dict[str, Any]]:
        """One functionResponse per call, in the calls' order (an unanswered call gets one saying
        so), then the images the results held (a response carries text)."""
        responses: List[Dict[str, Any]] = []
        images: List[Dict[str, Any]] = []
        for call_id, name in calls:
            result = results.pop(call_id, None)
            if result is None:
                _count(self.changes, "missing_tool_result_filled")
                response: Dict[str, Any] = {"error": INTERRUPTED_TOOL_TEXT}
            else:
                inner = _block_list(result.get("content"))
                text = _block_text(inner)
                response = {"error": text or "the tool failed"} if result.get("is_error") else {"output": text}
                images += [m for m in (_gemini_media(b.get("source") or {}, "image/png") for b in inner
                                       if isinstance(b, dict) and b.get("type") == "image") if m]
            part: Dict[str, Any] = {"name": name, "response": response}
            if call_id:
                part["id"] = call_id
            responses.append({"functionResponse": part})
        return responses + images

    def _model_steps(self, blocks: List[Any]) -> List[Tuple[List[Dict[str, Any]], List[Tuple[str, str]]]]:
        """An assistant message as the Gemini answers it holds: (parts, calls) for each."""
        steps: List[Tuple[List[Dict[str, Any]], List[Tuple[str, str]]]] = [([], [])]
        pending: Optional[str] = None  # a call's signature, waiting for its functionCall part
        for block in blocks:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            parts, calls = steps[-1]
            if kind in ("thinking", "redacted_thinking"):
                place, signature = _signature_of(block)
                if not place:
                    _count(self.changes, "foreign_thinking_dropped")
                    continue
                if not self.trusted(signature):
                    _count(self.changes, "foreign_signature_dropped")
                    continue
                if calls:  # a new answer begins after the calls of the last
                    steps.append(([], []))
                    parts = steps[-1][0]
                if place == "thought":
                    parts.append({"text": str(block.get("thinking") or ""), "thought": True,
                                  "thoughtSignature": signature})
                else:
                    pending = signature
            elif kind == "text" and str(block.get("text") or ""):
                if calls:
                    steps.append(([], []))
                steps[-1][0].append({"text": str(block["text"])})
            elif kind == "tool_use":
                call_id = str(block.get("id") or "")
                name = gemini_function_name(str(block.get("name") or "unknown_tool"))
                args = block.get("input") if isinstance(block.get("input"), dict) else {}
                part: Dict[str, Any] = {"functionCall": {"name": name, "args": args}}
                if call_id:
                    part["functionCall"]["id"] = call_id
                signature = pending or (self.call_signature(call_id) if call_id else None)
                pending = None
                if signature and self.trusted(signature):
                    if calls:  # a signed call is the first of its answer
                        steps.append(([], []))
                    part["thoughtSignature"] = signature
                steps[-1][0].append(part)
                steps[-1][1].append((call_id, name))
        return [step for step in steps if step[0]]

    def sign_current_turn(self) -> None:
        """Give each model turn since the user last wrote a signature on its first call if it has
        none (Gemini refuses the request otherwise): the one Gemini documents for a lost signature."""
        for content in reversed(self.contents):
            if content["role"] == "user":
                if _gemini_user_wrote(content["parts"]):
                    return
                continue
            first = next((p for p in content["parts"] if "functionCall" in p), None)
            if first is not None and "thoughtSignature" not in first:
                first["thoughtSignature"] = GEMINI_SKIP_SIGNATURE
                _count(self.changes, "signature_skipped")


def _gemini_user_wrote(parts: List[Dict[str, Any]]) -> bool:
    """Whether a user turn is the user writing, which ends Gemini's current turn: a part that is
    not a function response, nor an image or file given back beside function responses (the
    images of tool results: they belong to the tool loop)."""
    answering = any("functionResponse" in p for p in parts)
    return any("functionResponse" not in p and not (answering and ("inlineData" in p or "fileData" in p))
               for p in parts)


def anthropic_to_gemini(body: Dict[str, Any], model: str, trusted: Callable[[str], bool],
                        call_signature: Callable[[str], Optional[str]]) -> Tuple[Dict[str, Any], Dict[str, int]]:
    """A sanitized Anthropic Messages request as a Gemini ``generateContent`` request, and what changed.

    ``trusted`` says whether a Gemini signature may go back to this upstream and model (else the
    part goes without it); ``call_signature`` finds a call's signature by its tool_use id when
    the client dropped the thinking block that carried it.
    """
    changes: Dict[str, int] = {}
    out: Dict[str, Any] = {}
    system = body.get("system")
    system_text = system if isinstance(system, str) else _block_text(system)
    if system_text.strip():
        out["systemInstruction"] = {"parts": [{"text": system_text}]}
    history = GeminiHistory(trusted, call_signature, changes)
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            history.add(message.get("role"), message.get("content"))
    contents = history.finish()
    history.sign_current_turn()
    if contents and contents[0]["role"] == "model":
        contents.insert(0, {"role": "user", "parts": [{"text": CONTINUATION_TEXT}]})
    if not contents:
        raise InvalidRequest("messages: nothing to send (every message is empty)")
    out["contents"] = contents
    tools, names = _gemini_tools(body, model, changes)
    if tools:
        out["tools"] = tools
        tool_config = _gemini_tool_config(body.get("tool_choice"), names) if names else None
        if tool_config:
            out["toolConfig"] = tool_config
    generation: Dict[str, Any] = {}
    if _is_int(body.get("max_tokens")):
        generation["maxOutputTokens"] = min(body["max_tokens"], GEMINI_MAX_OUTPUT_TOKENS)
        _count(changes, "max_tokens_lowered", int(body["max_tokens"] > GEMINI_MAX_OUTPUT_TOKENS))
    for key, name in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK")):
        if isinstance(body.get(key), (int, float)) and not isinstance(body.get(key), bool):
            generation[name] = body[key]
    stops = [s for s in _stop_sequences(body) if isinstance(s, str) and s]
    if stops:
        generation["stopSequences"] = stops[:5]
        _count(changes, "stop_sequences_dropped", max(0, len(stops) - 5))
    thinking = gemini_thinking_config(body, model)
    if thinking:
        generation["thinkingConfig"] = thinking
    schema = output_schema(body)
    if schema is not None:
        generation["responseMimeType"] = "application/json"
        if schema != ANY_JSON_OBJECT:
            generation["responseJsonSchema"] = schema
    if generation:
        out["generationConfig"] = generation
    return out, changes


def merge_gemini_extra(request: Dict[str, Any], extra: Dict[str, Any]) -> None:
    """An upstream's ``extra_body`` merged into a Gemini request, objects key by key (Gemini's
    settings are nested: ``generationConfig``, ``toolConfig``); a thinking knob it sets replaces
    the other one agproxy chose (both is a 400)."""
    def merge(target: Dict[str, Any], source: Dict[str, Any]) -> None:
        for key, value in source.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                merge(target[key], value)
            else:
                target[key] = copy.deepcopy(value)

    merge(request, extra)
    wanted = ((extra.get("generationConfig") or {}) if isinstance(extra.get("generationConfig"), dict) else {})
    wanted = wanted.get("thinkingConfig") if isinstance(wanted.get("thinkingConfig"), dict) else {}
    thinking = (request.get("generationConfig") or {}).get("thinkingConfig")
    if isinstance(thinking, dict) and "thinkingLevel" in thinking and "thinkingBudget" in thinking:
        del thinking["thinkingBudget" if "thinkingLevel" in wanted else "thinkingLevel"]


def gemini_usage(metadata: Any) -> Dict[str, int]:
    """Gemini ``usageMetadata`` as Anthropic usage: cached prompt tokens as cache reads, the
    prompt tokens of Google's own tools as input, thinking billed as output."""
    if not isinstance(metadata, dict):
        return {}
    prompt = _token_count(metadata.get("promptTokenCount")) + _token_count(metadata.get("toolUsePromptTokenCount"))
    cached = min(prompt, _token_count(metadata.get("cachedContentTokenCount")))
    return {"input_tokens": prompt - cached, "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0,
            "output_tokens": _token_count(metadata.get("candidatesTokenCount")) +
            _token_count(metadata.get("thoughtsTokenCount"))}


def gemini_error_event(payload: Dict[str, Any]) -> Event:
    """An error Gemini sent in its stream, as an Anthropic ``error`` event."""
    error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
    code = error.get("code")
    status = code if _is_int(code) and 400 <= code <= 599 else 500
    return Event("error", upstream_error_event(
        {"type": error_type_for_status(status), "message": str(error.get("message") or "upstream error")}))


#: Lines of a Gemini stream outside its ``data:`` lines, kept to read an error written there.
_MAX_STRAY_BYTES = 1024 * 1024
_SSE_FIELD_LINE = re.compile(rb"\s*$|(?:\xef\xbb\xbf)?(?:data|event|id|retry)(?::|$)|(?:\xef\xbb\xbf)?:")
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
#: A line break followed by something that may not be an SSE line.
_STRAY_LINE_START = re.compile(rb"[\r\n](?![\r\n]|data:|event:|id:|retry:|:|\Z)")
#: The same for bytes without a lone CR (the usual read, LF or CRLF), ten times faster: the regex
#: engine finds a literal first byte quickly, a class of two byte by byte. (A CR followed by LF, or
#: last, never begins a match of the first, so it finds what this one finds there.)
_STRAY_LF_LINE_START = re.compile(rb"\n(?![\r\n]|data:|event:|id:|retry:|:|\Z)")
#: A CR that is a line break of its own: neither followed by LF nor the bytes' last.
_LONE_CR = re.compile(rb"\r(?!\n|\Z)")


class StrayLines:
    """The lines of an event stream that are not SSE lines (Gemini writes an error that arrives
    mid-stream as a bare JSON body), gathered in linear time however the bytes are split, and
    parsed once: when their brackets close, or at the body's end."""

    def __init__(self) -> None:
        self.text = bytearray()
        self._head = bytearray()  # the start of the current line, until it tells what it is
        self._stray: Optional[bool] = None
        self._end = _JsonEnd()
        self._whole = False

    def feed(self, data: bytes) -> bool:
        """Take bytes; True when the stray lines make a whole JSON value (call :meth:`error`)."""
        if self._stray is None and self._head:  # a line the last read began: it alone is read slowly
            line_break = _LINE_BREAK.search(data)
            if line_break is not None and line_break.end() < len(data):
                return self._lines(data[:line_break.end()]) | self.feed(data[line_break.end():])
        at_line_start = self._stray is None and not self._head
        if at_line_start or self._stray is False:
            last = max(data.rfind(b"\n"), data.rfind(b"\r"))
            lines = data if last < 0 or last == len(data) - 1 else data[:last + 1]
            stray_line = _STRAY_LINE_START if b"\r" in lines and _LONE_CR.search(lines) else _STRAY_LF_LINE_START
            if not stray_line.search(b"\n" + lines if at_line_start else lines):
                # the fast way, for the usual read: every line in it an SSE line
                if lines is data:
                    self._stray = None if last >= 0 else False
                    return False
                self._stray = None  # ... but the last one, begun (a read cut it): it alone is read slowly
                data = data[last + 1:]
        return self._lines(data)

    def _lines(self, data: bytes) -> bool:
        """:meth:`feed` line by line."""
        pieces = _LINE_BREAK.split(data)
        for number, piece in enumerate(pieces):
            ended = number < len(pieces) - 1
            if self._stray is None:
                self._head += piece
                if ended or (len(self._head) >= 8 and self._head.strip()):  # an indent alone tells nothing yet
                    self._stray = not _SSE_FIELD_LINE.match(bytes(self._head))
                    if self._stray:
                        self._take(bytes(self._head))
                    self._head = bytearray()
            elif self._stray:
                self._take(piece)
            if ended:
                if self._stray:
                    self._take(b"\n")
                self._stray = None
        if len(self.text) + len(self._head) > _MAX_STRAY_BYTES:
            raise UpstreamFailure("upstream sent a stream that is not an event stream")
        return self._whole

    def _take(self, piece: bytes) -> None:
        self.text += piece
        if self._end.feed(piece.decode("utf-8", "replace")):
            self._whole = True

    def end(self) -> None:
        """The body ended: its last line is whole, with or without a line break."""
        self.feed(b"\n")

    def error(self) -> Dict[str, Any]:
        """The error body the stray lines make; :class:`UpstreamFailure` for anything else."""
        text = bytes(self.text).strip()
        try:
            parsed = loads_strict(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and len(parsed) == 1:
            parsed = parsed[0]
        if not isinstance(parsed, dict) or not isinstance(parsed.get("error"), dict):
            raise UpstreamFailure("upstream sent something in its stream that is not an event: "
                                  f"{excerpt(text.decode('utf-8', 'replace'), 100)!r}")
        return parsed


class GeminiStreamTranslator:
    """Gemini ``GenerateContentResponse`` chunks in, the exact Anthropic event grammar out.

    ``feed()`` a parsed chunk (or a whole ``generateContent`` body), get :class:`Event` objects;
    ``finish()`` closes the message. Thought parts become thinking blocks, text text blocks, each
    ``functionCall`` (always whole) a tool_use block with its arguments in one delta. Each thought
    signature rides along as described above this class, recorded with ``on_signature(tool_use
    id or "", signature)``. Only candidate 0 counts; usage is the last ``usageMetadata`` seen.
    """

    def __init__(self, model: str, input_tokens: int = 0,
                 on_signature: Optional[Callable[[str, str], None]] = None,
                 names: Optional[Dict[str, str]] = None,
                 on_upstream_id: Optional[Callable[[str], None]] = None,
                 usage: Optional[Dict[str, Any]] = None) -> None:
        self.model = model
        self.input_tokens = input_tokens
        #: the usage the events have said so far, as :class:`OpenAIStreamTranslator`'s
        self.usage: Dict[str, Any] = usage if usage is not None else {}
        #: its events go to a client as they come (not into one Message): deltas are encoded at once
        self.relayed = False
        self.on_signature = on_signature
        self.on_upstream_id = on_upstream_id  # told Gemini's responseId for the answer
        self.names = names or {}  # the client's tool names, by the names Gemini knows them by
        self.started = False
        self.finished = False
        self._index = -1
        self._open: Optional[str] = None  # "text", "thinking" or "tool"
        self._finish_reason: Optional[str] = None
        self._finish_message = ""
        self._block_reason: Optional[str] = None
        self._usage: Dict[str, Any] = {}
        self._tool_seen = False
        self._content_seen = False
        self._ids: Set[str] = set()
        self._run = DeltaRun()

    def _start(self, out: List[Event], response_id: Any) -> None:
        if self.started:
            return
        self.started = True
        _tell_upstream_id(self.on_upstream_id, response_id)
        message = {"id": new_message_id(), "type": "message",
                   "role": "assistant", "model": self.model, "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": {"input_tokens": self.input_tokens, "output_tokens": 1}}
        self.usage.update(message["usage"])
        out.append(Event("message_start", {"type": "message_start", "message": message}))

    def _close(self, out: List[Event]) -> None:
        if self._open is not None:
            out.append(Event("content_block_stop", {"type": "content_block_stop", "index": self._index}))
            self._open = None

    def _block(self, out: List[Event], block: Dict[str, Any], kind: str) -> None:
        self._close(out)
        self._index += 1
        self._open = kind
        out.append(Event("content_block_start", {"type": "content_block_start", "index": self._index,
                                                           "content_block": block}))
        self._content_seen = True

    def _delta(self, out: List[Event], kind: str, field: str, text: str) -> None:
        # relayed, a delta is encoded now and kept as bytes alone (see Event): the bulk of a stream;
        # a read's run of deltas to one block goes out as one event (DeltaRun)
        self._run.add(out, self._index, kind, field, text, self.relayed)

    @property
    def unfinished(self) -> bool:
        """It gave content but Gemini has not said the answer ended (no finishReason): a stream
        cut short, not a whole answer."""
        return self._content_seen and self._finish_reason is None and not self._block_reason

    @property
    def said_end(self) -> bool:
        """Gemini said the answer ended (a finishReason, or a prompt it blocked): a body that
        breaks after this loses nothing of the answer."""
        return self._finish_reason is not None or bool(self._block_reason)

    def _call_signature_block(self, out: List[Event], signature: str) -> None:
        """An empty thinking block that carries the signature of the tool_use right after it."""
        self._block(out, {"type": "thinking", "thinking": "", "signature": ""}, "thinking")
        self._delta(out, "signature_delta", "signature", f"{GEMINI_SIGNATURE_PREFIX}call:{signature}")
        self._close(out)

    def feed(self, chunk: Dict[str, Any]) -> List[Event]:
        """Events for one parsed chunk (an ``error`` chunk gives an error event and ends the stream)."""
        out: List[Event] = []
        self.feed_into(out, chunk)
        self._run.end_read()
        return out

    def end_read(self) -> None:
        """The events of a read are all in the list :meth:`feed_into` was given: its run of deltas
        is written as one event (call it before the list goes out)."""
        self._run.end_read()

    def feed_into(self, out: List[Event], chunk: Dict[str, Any]) -> None:
        """:meth:`feed`, its events added to ``out`` (a stream's reader gathers a read's events in one list,
        then calls :meth:`end_read`)."""
        if self.finished:
            return
        error = chunk.get("error")
        if error is not None and isinstance(error, dict):
            if self._finish_reason is not None:
                return  # after the answer's end (its finishReason), as any chunk then, no part of it
            self.finished = True
            self._start(out, None)
            out.append(gemini_error_event(chunk))
            return
        candidates = chunk.get("candidates")
        if candidates is None and "candidates" not in chunk and "promptFeedback" not in chunk \
                and "usageMetadata" not in chunk:
            raise UpstreamFailure("upstream sent something that is not a Gemini response (no candidates, "
                                  "promptFeedback or usageMetadata)")
        if not self.started:
            self._start(out, chunk.get("responseId"))
        usage = chunk.get("usageMetadata")
        if isinstance(usage, dict):
            self._usage = usage  # each chunk's is the whole so far: the last one counts
        if self._finish_reason is not None:
            return  # the answer has ended (Gemini's one end marker): a later chunk's text is no part of it
        feedback = chunk.get("promptFeedback")
        if feedback is not None and isinstance(feedback, dict) and isinstance(feedback.get("blockReason"), str):
            self._block_reason = feedback["blockReason"][:100]
        if candidates is not None and not isinstance(candidates, list):
            raise UpstreamFailure("upstream sent a chunk whose candidates is not a list")
        candidate = candidates[0] if candidates and isinstance(candidates[0], dict) else {}
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        if parts is not None and not isinstance(parts, list):
            raise UpstreamFailure("upstream sent a candidate whose parts is not a list")
        for part in parts or []:
            if not isinstance(part, dict):
                continue
            text = part.get("text")
            if len(part) == 1 and type(text) is str and self._open == "text":
                if text:  # the usual part: more of the open text block (as _part would)
                    self._run.add(out, self._index, "text_delta", "text", text, self.relayed)
            else:
                self._part(out, part)
        finish_reason = candidate.get("finishReason")
        if finish_reason is not None and isinstance(finish_reason, str):
            self._finish_reason = finish_reason[:100]
            self._finish_message = str(candidate.get("finishMessage") or "")[:1000]

    def _part(self, out: List[Event], part: Dict[str, Any]) -> None:
        signature = _text_or(part.get("thoughtSignature"), "")
        call = part.get("functionCall")
        if isinstance(call, dict):
            call_id = _text_or(call.get("id"), "")
            call_id = call_id if _GEMINI_ID.fullmatch(call_id) and call_id not in self._ids else new_tool_id()
            self._ids.add(call_id)
            if signature:
                self._call_signature_block(out, signature)
                if self.on_signature:
                    self.on_signature(call_id, signature)
            args = call.get("args") if isinstance(call.get("args"), dict) else {}
            name = _text_or(call.get("name"), "unknown_tool")
            self._block(out, {"type": "tool_use", "id": call_id, "name": self.names.get(name, name), "input": {}},
                        "tool")
            self._delta(out, "input_json_delta", "partial_json", json.dumps(args, ensure_ascii=False))
            self._close(out)
            self._tool_seen = True
            return
        text = part.get("text") if isinstance(part.get("text"), str) else ""
        if part.get("thought") is True:
            if text and self._open != "thinking":
                self._block(out, {"type": "thinking", "thinking": "", "signature": ""}, "thinking")
            if text:
                self._delta(out, "thinking_delta", "thinking", text)
            if signature:
                if self._open != "thinking":
                    self._block(out, {"type": "thinking", "thinking": "", "signature": ""}, "thinking")
                self._delta(out, "signature_delta", "signature", f"{GEMINI_SIGNATURE_PREFIX}thought:{signature}")
                self._close(out)
                if self.on_signature:
                    self.on_signature("", signature)
            return
        if text:
            if self._open != "text":
                self._block(out, {"type": "text", "text": ""}, "text")
            self._delta(out, "text_delta", "text", text)

    def finish(self) -> List[Event]:
        """The closing events: the last block's stop, message_delta, message_stop; or
        :class:`UpstreamFailure` when Gemini failed to form a tool call (a retry may well succeed)."""
        out: List[Event] = []
        if self.finished:
            return out
        reason = self._finish_reason
        if reason in _GEMINI_CALL_FAILURES:
            said = f": {self._finish_message}" if self._finish_message else ""
            raise UpstreamFailure(f"the model failed to make a tool call ({reason}{said})")
        self._start(out, None)
        if self._block_reason and not self._content_seen:
            self._block(out, {"type": "text", "text": ""}, "text")
            self._delta(out, "text_delta", "text", f"Gemini blocked this prompt ({self._block_reason}).")
        self._close(out)
        if self._tool_seen:
            stop_reason = "tool_use"
        elif self._block_reason or reason in _GEMINI_REFUSALS:
            stop_reason = "refusal"
        elif reason == "MAX_TOKENS":
            stop_reason = "max_tokens"
        else:
            stop_reason = "end_turn"
        usage = gemini_usage(self._usage) or {"output_tokens": 0}
        self.usage.update(usage)
        out.append(Event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": usage}))
        out.append(Event("message_stop", {"type": "message_stop"}))
        self.finished = True
        self._run.end_read()
        return out


def gemini_to_anthropic(answer: Any, model: str, on_signature: Optional[Callable[[str, str], None]] = None,
                        input_tokens: int = 0, names: Optional[Dict[str, str]] = None,
                        on_upstream_id: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """A whole ``generateContent`` answer (or the chunks of a stream sent as one JSON array) as
    an Anthropic Message, by way of the stream translator: one set of rules for both."""
    chunks = answer if isinstance(answer, list) else [answer]
    if not chunks or not all(isinstance(c, dict) for c in chunks):
        raise UpstreamFailure("upstream answered something that is not a Gemini response")
    translator = GeminiStreamTranslator(model, input_tokens, on_signature, names, on_upstream_id)
    events: List[Event] = []
    for chunk in chunks:
        events += translator.feed(chunk)
    events += translator.finish()
    accumulator = MessageAccumulator()
    for event in events:
        accumulator.add(event.name, event.data)
    return accumulator.result()


# -- client dialects: the other agents' protocols in, as the internal Anthropic form ----------------
#
# A client dialect (issue 21) is the inverse of a translator above: a request in the client's
# protocol becomes an Anthropic Messages request (the internal form every route and adapter
# speaks), and the internal Anthropic events (:class:`Event`) or the assembled Message become the
# client's stream or JSON; agproxy's errors become the client's error shape. Structured output
# travels in the internal form as ``output_config.format`` (``{"type": "json_schema", "schema":
# {...}}``). Each protocol has its block below; the dialect objects that use them (the registry that
# mirrors ADAPTERS) live with the gateway.

# -- client dialect: OpenAI Chat Completions ----------------------------------------------------------

#: The answer length a Chat Completions request gets when it names none (OpenAI's default is the
#: model's whole output, which the internal form cannot leave open): what every Claude model can
#: write, Claude 3.5 Haiku's maximum being the smallest. A request that thinks gets its budget on top.
CHAT_DEFAULT_MAX_TOKENS = 8192
#: ``reasoning_effort`` as a thinking budget in tokens: the inverse of the mapping that
#: :func:`anthropic_to_openai` applies (under 4096 low, under 16384 medium), and Gemini's budgets.
_CHAT_THINKING_BUDGETS = {"minimal": _MIN_THINKING_BUDGET, "low": 2048, "medium": 8192, "high": 24576,
                          "xhigh": 32768}
#: Image types Anthropic takes in a base64 image block.
_CHAT_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_DATA_URL = _LazyPattern(r"data:([\w.+-]+/[\w.+-]+)((?:;[^;,]*)*?);base64,(.*)\Z", re.DOTALL)
_CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
#: Anthropic's stop reasons as Chat Completions finish reasons (a server tool's pause ends the turn).
_CHAT_FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                        "model_context_window_exceeded": "length", "tool_use": "tool_calls",
                        "refusal": "content_filter"}
#: agproxy's (Anthropic's) error types as OpenAI's: a client keys on the status, a few on these
#: (``insufficient_quota`` means "do not retry" to the OpenAI Agents SDK and LiteLLM).
_CHAT_ERROR_TYPES = {"api_error": "server_error", "overloaded_error": "server_error", "timeout_error": "server_error",
                     "billing_error": "insufficient_quota", "request_too_large": "invalid_request_error"}
_CHAT_ERROR_CODES = {"authentication_error": "invalid_api_key", "rate_limit_error": "rate_limit_exceeded",
                     "billing_error": "insufficient_quota", "request_too_large": "request_too_large",
                     "overloaded_error": "overloaded"}
#: A request field a message of :func:`chat_request_to_anthropic` opens with (OpenAI's ``param``).
_CHAT_PARAM = _LazyPattern(r"([A-Za-z_]\w*(?:\[\d+\]|\.\w+)*): ")


def chat_request_to_anthropic(body: Dict[str, Any], changes: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    """A Chat Completions request (``POST /v1/chat/completions``) as the internal Anthropic
    Messages request. System and developer messages become the system prompt; tool messages
    become tool_result blocks of a user turn; consecutive turns of one role are merged, results
    first. What cannot be carried (``n`` other than 1, audio, a file by id, an unknown role or tool
    type) is an :class:`InvalidRequest` naming the field in the client's words; fields the
    internal form has no use for (``seed``, ``logprobs``, ``store``, ...) are ignored, as
    OpenAI-compatible servers do; what is changed is counted in ``changes`` (the sanitizer's
    change counts). The stream's options are read by :func:`chat_include_usage`."""
    model = body.get("model")
    _expect(isinstance(model, str) and 0 < len(model) <= MAX_MODEL_CHARS, "model",
            f"must be a non-empty string of at most {MAX_MODEL_CHARS} characters")
    n = body.get("n")
    _expect(n is None or n == 1 and _is_int(n), "n", f"only 1 choice per request is supported, got {n!r}")
    system, messages = _chat_messages(body.get("messages"), {} if changes is None else changes)
    out: Dict[str, Any] = {"model": model, "messages": messages}
    if system:
        out["system"] = system
    limit = _chat_max_tokens(body)
    thinking_budget = _chat_thinking_budget(body, limit)
    if thinking_budget is not None and _in_tool_loop(messages):
        # Anthropic wants the thinking block that opened the tool calls answered here, and a Chat
        # client sends none back (nor its signature): this turn goes without thinking
        thinking_budget = None
    tools = _chat_tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        choice = _chat_tool_choice(body.get("tool_choice"), [t["function"]["name"] for t in body["tools"]])
        parallel = body.get("parallel_tool_calls")
        _expect(parallel is None or isinstance(parallel, bool), "parallel_tool_calls", "must be true or false")
        if parallel is False and choice.get("type") != "none":
            choice["disable_parallel_tool_use"] = True
        if choice != {"type": "auto"}:
            out["tool_choice"] = choice
        if choice.get("type") in ("any", "tool"):
            thinking_budget = None  # Anthropic refuses thinking with a forced tool call
    if thinking_budget is not None:
        out["thinking"] = {"type": "enabled", "budget_tokens": thinking_budget}
    out["max_tokens"] = limit if limit is not None else CHAT_DEFAULT_MAX_TOKENS + (thinking_budget or 0)
    _chat_sampling(body, out, thinking_budget is not None)
    schema = _chat_response_format(body.get("response_format"))
    if schema is not None:
        out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    stream = body.get("stream")
    _expect(stream is None or isinstance(stream, bool), "stream", "must be true or false")
    out["stream"] = stream is True
    chat_include_usage(body)
    user = body.get("user") if body.get("user") is not None else body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user[:256]}
    return out


def chat_include_usage(body: Dict[str, Any]) -> bool:
    """Whether a Chat Completions request asks for the last chunk of its stream to carry the usage
    (``stream_options.include_usage``); an :class:`InvalidRequest` for options of the wrong type."""
    options = body.get("stream_options")
    if options is None:
        return False
    _expect(isinstance(options, dict), "stream_options", "must be an object")
    include = options.get("include_usage")
    _expect(include is None or isinstance(include, bool), "stream_options.include_usage", "must be true or false")
    return include is True


def _chat_messages(messages: Any, changes: Dict[str, int]) -> Tuple[str, List[Dict[str, Any]]]:
    """The system prompt (every system and developer message, in order) and the conversation in
    strict user/assistant alternation, tool results first in each user turn. A tool message that
    answers no call of the assistant message before it is kept where it stands, as text
    (:func:`_orphan_result_text`, counted ``orphan_tool_result_to_text``): moved first, it would
    come before the user's own words."""
    _expect(isinstance(messages, list) and bool(messages), "messages", "must be a non-empty list")
    system: List[str] = []
    turns: List[Dict[str, Any]] = []
    open_calls: Set[str] = set()  # the ids of the last assistant message's calls not yet answered
    for i, message in enumerate(messages):
        at = f"messages[{i}]"
        _expect(isinstance(message, dict), at, "must be an object")
        role = message.get("role")
        _expect(role in _CHAT_ROLES, f"{at}.role", f"must be one of {', '.join(_CHAT_ROLES)}, got {role!r}")
        content = message.get("content")
        if role in ("system", "developer"):
            text = "\n".join(b["text"] for b in _chat_parts(content, f"{at}.content", ("text",)))
            if text:
                system.append(text)
        elif role == "user":
            blocks = _chat_parts(content, f"{at}.content", ("text", "image_url", "file"))
            turns.append({"role": "user", "content": blocks})
        elif role == "tool":
            call_id = message.get("tool_call_id")
            _expect(isinstance(call_id, str) and bool(call_id), f"{at}.tool_call_id", "must be a non-empty string")
            inner = _chat_parts(content, f"{at}.content", ("text", "image_url"))
            result = {"type": "tool_result", "tool_use_id": call_id, "content": inner}
            if call_id in open_calls:
                open_calls.discard(call_id)
            else:
                result = _orphan_result_text(result)
                _count(changes, "orphan_tool_result_to_text")
            turns.append({"role": "user", "content": [result]})
        else:
            blocks = _chat_parts(content, f"{at}.content", ("text", "refusal"), nullable=True)
            if not blocks and isinstance(message.get("refusal"), str) and message["refusal"]:
                blocks = [{"type": "text", "text": message["refusal"]}]  # a refusal the model wrote
            blocks += _chat_tool_calls(message.get("tool_calls"), f"{at}.tool_calls")
            open_calls = {block["id"] for block in blocks if block["type"] == "tool_use"}
            if blocks:  # reasoning_content is left out: a thinking block without its signature is refused
                turns.append({"role": "assistant", "content": blocks})
    turns = [turn for turn in turns if turn["content"]]
    if not turns:  # only system messages: OpenAI answers them, Anthropic needs a user turn
        return "", [{"role": "user", "content": "\n\n".join(system) or "."}]
    merged = _merge_same_role(turns, {})
    for turn in merged:  # a user turn's tool results go first, as Anthropic requires
        turn["content"] = ([b for b in turn["content"] if b["type"] == "tool_result"]
                           + [b for b in turn["content"] if b["type"] != "tool_result"])
    return "\n\n".join(system), merged


def _in_tool_loop(messages: List[Dict[str, Any]]) -> bool:
    """Whether the conversation ends with tool results (the model's turn goes on after its calls)."""
    last = messages[-1]["content"]
    return isinstance(last, list) and any(block["type"] == "tool_result" for block in last)


def _chat_parts(content: Any, at: str, kinds: Sequence[str], nullable: bool = False) -> List[Dict[str, Any]]:
    """A message's ``content`` (a string or a list of parts of ``kinds``) as Anthropic blocks;
    empty text is left out."""
    if content is None and nullable:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    _expect(isinstance(content, list), at, "must be a string or a list of content parts")
    blocks: List[Dict[str, Any]] = []
    for j, part in enumerate(content):
        where = f"{at}[{j}]"
        _expect(isinstance(part, dict), where, "must be an object")
        kind = part.get("type")
        _expect(kind in kinds, f"{where}.type", f"must be one of {', '.join(kinds)} here, got {kind!r}")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            _expect(isinstance(text, str), f"{where}.{kind}", "must be a string")
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_chat_image(part.get("image_url"), f"{where}.image_url"))
        else:
            blocks.append(_chat_file(part.get("file"), f"{where}.file"))
    return blocks


def _chat_image(image: Any, at: str) -> Dict[str, Any]:
    """An ``image_url`` part as an Anthropic image block: a base64 ``data:`` URL or an http(s) URL."""
    if isinstance(image, str):  # some clients send the URL itself
        image = {"url": image}
    _expect(isinstance(image, dict) and isinstance(image.get("url"), str), f"{at}.url", "must be a string")
    url = image["url"]
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    media_type, data = _chat_data_url(url, f"{at}.url")
    _expect(media_type in _CHAT_IMAGE_TYPES, f"{at}.url",
            f"image type {media_type[:80]!r} is not supported; use one of {', '.join(_CHAT_IMAGE_TYPES)}")
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _chat_file(file: Any, at: str) -> Dict[str, Any]:
    """A ``file`` part given inline (``file_data``, a data URL) as a document block: a PDF, or text."""
    _expect(isinstance(file, dict), at, "must be an object")
    _expect(file.get("file_id") is None, f"{at}.file_id", "files by id cannot be served here; send file_data")
    _expect(isinstance(file.get("file_data"), str), f"{at}.file_data", "must be a string (a base64 data URL)")
    media_type, data = _chat_data_url(file["file_data"], f"{at}.file_data")
    block: Dict[str, Any]
    if media_type == "application/pdf":
        block = {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}
    elif media_type.startswith("text/"):
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except ValueError:
            raise InvalidRequest(f"{at}.file_data: is not base64 of UTF-8 text") from None
        block = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": text}}
    else:
        raise InvalidRequest(f"{at}.file_data: file type {media_type[:80]!r} is not supported; send a PDF or text")
    if isinstance(file.get("filename"), str) and file["filename"]:
        block["title"] = file["filename"][:500]
    return block


def _chat_data_url(url: str, at: str) -> Tuple[str, str]:
    """The media type and base64 data of a ``data:`` URL."""
    match = _DATA_URL.match(url)
    _expect(match is not None, at, "must be an http(s) URL or a base64 data: URL (data:TYPE;base64,...)")
    assert match is not None
    return match.group(1).lower(), match.group(3)


def _chat_tool_calls(calls: Any, at: str) -> List[Dict[str, Any]]:
    """An assistant message's ``tool_calls`` as tool_use blocks (arguments parsed, or repaired)."""
    if calls is None:
        return []
    _expect(isinstance(calls, list), at, "must be a list")
    blocks = []
    for k, call in enumerate(calls):
        where = f"{at}[{k}]"
        _expect(isinstance(call, dict), where, "must be an object")
        _expect(call.get("type", "function") == "function", f"{where}.type", "must be 'function'")
        _expect(isinstance(call.get("id"), str) and bool(call["id"]), f"{where}.id", "must be a non-empty string")
        function = call.get("function")
        _expect(isinstance(function, dict), f"{where}.function", "must be an object")
        _expect(isinstance(function.get("name"), str) and bool(function["name"]), f"{where}.function.name",
                "must be a non-empty string")
        arguments = function.get("arguments", "")
        _expect(isinstance(arguments, str), f"{where}.function.arguments", "must be a string (JSON)")
        blocks.append({"type": "tool_use", "id": call["id"], "name": _anthropic_tool_name(function["name"]),
                       "input": parse_tool_arguments(arguments)})
    return blocks


def _chat_max_tokens(body: Dict[str, Any]) -> Optional[int]:
    """The answer's length limit: ``max_completion_tokens``, else the older ``max_tokens``."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is not None:
            _expect(_is_int(value) and 1 <= value <= MAX_OUTPUT_TOKENS, key,
                    f"must be an integer from 1 to {MAX_OUTPUT_TOKENS}")
            return value
    return None


def _chat_thinking_budget(body: Dict[str, Any], limit: Optional[int]) -> Optional[int]:
    """The thinking budget ``reasoning_effort`` asks for (None: no thinking). Within a limit the
    client set, thinking takes at most half of it (OpenAI counts reasoning in the limit, Anthropic
    counts thinking in max_tokens), and none when that half is under Anthropic's minimum budget."""
    effort = body.get("reasoning_effort")
    if effort is None or effort == "none":
        return None
    _expect(isinstance(effort, str) and effort in _CHAT_THINKING_BUDGETS, "reasoning_effort",
            f"must be one of none, {', '.join(_CHAT_THINKING_BUDGETS)}, got {str(effort)[:40]!r}")
    budget = _CHAT_THINKING_BUDGETS[effort]
    if limit is not None:
        budget = min(budget, limit // 2)
    return budget if budget >= _MIN_THINKING_BUDGET else None


def _chat_sampling(body: Dict[str, Any], out: Dict[str, Any], thinking: bool) -> None:
    """temperature (OpenAI's 0 to 2, within Anthropic's 0 to 1), top_p, top_k and stop, checked;
    with thinking, temperature, top_k and a top_p under 0.95 are left out (Anthropic refuses them)."""
    temperature, top_p, top_k = body.get("temperature"), body.get("top_p"), body.get("top_k")
    if temperature is not None:
        _expect(_is_number(temperature) and 0 <= temperature <= 2, "temperature", "must be a number from 0 to 2")
        if not thinking:
            out["temperature"] = min(temperature, 1)
    if top_p is not None:
        _expect(_is_number(top_p) and 0 <= top_p <= 1, "top_p", "must be a number from 0 to 1")
        if not thinking or top_p >= 0.95:
            out["top_p"] = top_p
    if top_k is not None:  # not OpenAI's, but vLLM's and others'
        _expect(_is_int(top_k) and top_k >= 0, "top_k", "must be a non-negative integer")
        if not thinking:
            out["top_k"] = top_k
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        _expect(isinstance(stop, list) and all(isinstance(s, str) for s in stop), "stop",
                "must be a string or a list of strings")
        if stop:
            out["stop_sequences"] = stop


def _chat_tools(tools: Any) -> List[Dict[str, Any]]:
    """Function tools as Anthropic tools (``strict`` is ignored: Anthropic follows the schema)."""
    if tools is None:
        return []
    _expect(isinstance(tools, list), "tools", "must be a list")
    out = []
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        _expect(isinstance(tool, dict), at, "must be an object")
        _expect(tool.get("type") == "function", f"{at}.type",
                f"only function tools can be served here, got {str(tool.get('type'))[:40]!r}")
        function = tool.get("function")
        _expect(isinstance(function, dict), f"{at}.function", "must be an object")
        name, description, parameters = function.get("name"), function.get("description"), function.get("parameters")
        _expect(isinstance(name, str) and bool(name), f"{at}.function.name", "must be a non-empty string")
        _expect(description is None or isinstance(description, str), f"{at}.function.description",
                "must be a string")
        _expect(parameters is None or isinstance(parameters, dict), f"{at}.function.parameters", "must be an object")
        converted = {"name": _anthropic_tool_name(name),
                     "input_schema": parameters or {"type": "object", "properties": {}}}
        if description:
            converted["description"] = description
        out.append(converted)
    return out


def chat_client_tool_names(body: Dict[str, Any]) -> Dict[str, str]:
    """The client's function names that travel under another name (one Anthropic refuses, made
    valid by :func:`_anthropic_tool_name`), by that name: what gives the client its own names
    back in the calls of the answer."""
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    names = [tool["function"]["name"] for tool in tools if isinstance(tool, dict)
             and isinstance(tool.get("function"), dict) and isinstance(tool["function"].get("name"), str)]
    return {_anthropic_tool_name(name): name for name in names if _anthropic_tool_name(name) != name}


def _chat_tool_choice(choice: Any, names: Sequence[str]) -> Dict[str, Any]:
    """``tool_choice`` (none, auto, required, or a named function) as Anthropic's."""
    if choice is None or choice == "auto":
        return {"type": "auto"}
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    _expect(isinstance(choice, dict) and choice.get("type") == "function", "tool_choice",
            "must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}")
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    _expect(name in names, "tool_choice.function.name", f"must name one of the tools, got {str(name)[:80]!r}")
    return {"type": "tool", "name": _anthropic_tool_name(name)}


def _chat_response_format(response_format: Any) -> Optional[Dict[str, Any]]:
    """The structured-output schema ``response_format`` asks for (None for text)."""
    if response_format is None:
        return None
    _expect(isinstance(response_format, dict), "response_format", "must be an object")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return dict(ANY_JSON_OBJECT)
    _expect(kind == "json_schema", "response_format.type", f"must be text, json_object or json_schema, got {kind!r}")
    spec = response_format.get("json_schema")
    _expect(isinstance(spec, dict), "response_format.json_schema", "must be an object")
    schema = spec.get("schema")
    _expect(schema is None or isinstance(schema, dict), "response_format.json_schema.schema", "must be an object")
    return schema if schema else dict(ANY_JSON_OBJECT)


def _chat_usage(usage: Dict[str, Any]) -> Dict[str, Any]:
    """Anthropic usage as Chat Completions': the prompt counts the cache reads and writes too."""
    cached = upstream_count(usage.get("cache_read_input_tokens")) or 0
    prompt = ((upstream_count(usage.get("input_tokens")) or 0) + cached
              + (upstream_count(usage.get("cache_creation_input_tokens")) or 0))
    completion = upstream_count(usage.get("output_tokens")) or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _chat_id(message_id: Any) -> str:
    """The ``chatcmpl-`` id of the answer to Message ``message_id`` (one id for a whole stream)."""
    text = message_id if isinstance(message_id, str) and message_id else new_message_id()
    return "chatcmpl-" + (text[4:] if text.startswith("msg_") else text)


def anthropic_message_to_chat(message: Dict[str, Any], model: str, created: int,
                              names: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """A whole Anthropic Message as a ``chat.completion`` (``model``: the name the client asked
    for; ``created``: the Unix time, passed in). Thinking is ``reasoning_content``, as DeepSeek
    and vLLM write it; tool_use blocks are ``tool_calls`` with their arguments as JSON text, named
    as the client named them (``names``: :func:`chat_client_tool_names`)."""
    names = names or {}
    texts, thinking, calls = [], [], []
    for block in message.get("content") or []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "thinking":
            thinking.append(str(block.get("thinking") or ""))
        elif kind == "tool_use":
            calls.append({"id": str(block.get("id")), "type": "function", "function": {
                "name": names.get(str(block.get("name")), str(block.get("name"))),
                "arguments": _COMPACT_JSON.encode(block.get("input") if isinstance(block.get("input"), dict) else {})}})
    reply: Dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None,
                             "refusal": None}
    if thinking:
        reply["reasoning_content"] = "".join(thinking)
    if calls:
        reply["tool_calls"] = calls
    finish = _CHAT_FINISH_REASONS.get(str(message.get("stop_reason")), "stop")
    usage = message.get("usage") if isinstance(message.get("usage"), dict) else {}
    return {"id": _chat_id(message.get("id")), "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": reply, "logprobs": None, "finish_reason": finish}],
            "usage": _chat_usage(usage)}


def chat_error_body(status: int, error_type: str, message: str) -> Dict[str, Any]:
    """agproxy's error (an Anthropic ``error_type``; ``status`` where the type is not one) as
    OpenAI's error JSON: ``{"error": {"message", "type", "param", "code"}}``. ``param`` is the
    request field a 400 names (its message opens with it)."""
    if error_type not in _ERROR_STATUS and error_type not in _CHAT_ERROR_TYPES:
        error_type = error_type_for_status(status)
    param = None
    if error_type == "invalid_request_error":
        match = _CHAT_PARAM.match(message)
        param = match.group(1) if match else None
    return {"error": {"message": message, "type": _CHAT_ERROR_TYPES.get(error_type, error_type), "param": param,
                      "code": _CHAT_ERROR_CODES.get(error_type)}}


def overload_status(status: int) -> int:
    """The status an OpenAI or Gemini client gets for agproxy's: Anthropic's overload (529) as
    503, the overload status of OpenAI (``server_is_overloaded``) and Google (``UNAVAILABLE``).
    Codex CLI 0.171.0 reads 529 as an "unknown status" and retries it as any other
    (codex-rs/codex-api/src/api_bridge.rs, map_api_error: only a 503 can be ServerOverloaded);
    Gemini CLI 0.61.0 reads a RetryInfo only from a 429, 499 or 503 (classifyGoogleError in its
    bundle's googleQuotaErrors.js) and retries other 5xx on its own backoff."""
    return 503 if status == 529 else status


class ChatStreamEncoder(StreamEncoder):
    """The internal Anthropic events of one answer as a Chat Completions stream: one
    ``chat.completion.chunk`` per piece, one id throughout (from the Message's), the role in the
    first delta, thinking as ``reasoning_content``, each tool call's id and name in its first
    piece then its arguments as they come, the finish reason, the usage chunk (empty ``choices``)
    when the client asked for it, then ``data: [DONE]``. Events are taken one at a time, so any
    batching of the same events gives the same bytes. After an error or the end it writes nothing.
    ``names``: the client's tool names by the names they travel under (:func:`chat_client_tool_names`)."""

    def __init__(self, model: str, created: int, include_usage: bool = False,
                 names: Optional[Dict[str, str]] = None) -> None:
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.names = names or {}
        self.ended = False
        self._head = ""  # a chunk's id, object, created and model, known once the id is
        self._prefix = ""  # a chunk's JSON up to its delta
        self._usage: Dict[str, Any] = {}
        self._calls: Dict[int, int] = {}  # block index -> tool call index
        self._arguments: Dict[int, bool] = {}  # block index -> whether arguments were written
        self._finished = False

    def encode(self, events: List[Event]) -> bytes:
        """A batch of events as the client's SSE bytes (b"" when nothing in it shows)."""
        out: List[str] = []
        for event in events:
            if self.ended:
                break
            self._event(event, out)
        return "".join(out).encode("utf-8", "replace")

    def ping(self) -> bytes:
        """An SSE comment: every SSE parser skips it (OpenRouter sends the same while it waits)."""
        return b"" if self.ended else b": ping\n\n"

    def error(self, error_type: str, message: str) -> bytes:
        """The end of a stream that broke: a ``data: {"error": ...}`` line, which the openai SDK
        raises as an APIError, and no ``[DONE]``."""
        if self.ended:
            return b""
        self.ended = True
        body = chat_error_body(_ERROR_STATUS.get(error_type, 500), error_type, message)
        return f"data: {_COMPACT_JSON.encode(body)}\n\n".encode("utf-8", "replace")

    def _chunk(self, delta: Dict[str, Any], finish: Optional[str] = None) -> str:
        if not self._prefix:
            self._start(None)
        finish_json = "null" if finish is None else f'"{finish}"'
        return (f'data: {self._prefix}{_COMPACT_JSON.encode(delta)},"logprobs":null,'
                f'"finish_reason":{finish_json}}}]}}\n\n')

    def _start(self, message_id: Any) -> None:
        head = {"id": _chat_id(message_id), "object": "chat.completion.chunk", "created": self.created,
                "model": self.model}
        self._head = _COMPACT_JSON.encode(head)[:-1]  # the object without its closing brace
        self._prefix = self._head + ',"choices":[{"index":0,"delta":'

    def _event(self, event: Event, out: List[str]) -> None:
        name = event.name
        if name == "ping":
            return
        data = event.data
        if name == "message_start":
            message = data.get("message") if isinstance(data.get("message"), dict) else {}
            if not self._prefix:
                self._start(message.get("id"))
            if isinstance(message.get("usage"), dict):
                merge_usage(self._usage, message["usage"])
            out.append(self._chunk({"role": "assistant", "content": "", "refusal": None}))
        elif name == "content_block_start":
            self._block_start(data, out)
        elif name == "content_block_delta":
            self._delta(data, out)
        elif name == "content_block_stop":
            index = data.get("index")
            if _is_int(index) and index in self._arguments and not self._arguments.pop(index):
                out.append(self._call_piece(index, {"arguments": "{}"}))
        elif name == "message_delta":
            if isinstance(data.get("usage"), dict):
                merge_usage(self._usage, data["usage"])
            delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
            if not self._finished and delta.get("stop_reason") is not None:
                self._finished = True
                out.append(self._chunk({}, _CHAT_FINISH_REASONS.get(str(delta["stop_reason"]), "stop")))
        elif name == "message_stop":
            if not self._finished:
                self._finished = True
                out.append(self._chunk({}, "tool_calls" if self._calls else "stop"))
            if self.include_usage:
                usage = _COMPACT_JSON.encode(_chat_usage(self._usage))
                out.append(f'data: {self._head},"choices":[],"usage":{usage}}}\n\n')
            out.append("data: [DONE]\n\n")
            self.ended = True
        elif name == "error":
            error = data.get("error") if isinstance(data.get("error"), dict) else {}
            ending: bytes = self.error(str(error.get("type") or "api_error"),
                                       str(error.get("message") or "upstream error"))
            out.append(ending.decode("utf-8"))

    def _block_start(self, data: Dict[str, Any], out: List[str]) -> None:
        block = data.get("content_block") if isinstance(data.get("content_block"), dict) else {}
        index = data.get("index")
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            out.append(self._chunk({"content": str(block["text"])}))
        elif kind == "thinking" and block.get("thinking"):
            out.append(self._chunk({"reasoning_content": str(block["thinking"])}))
        elif kind == "tool_use" and _is_int(index):
            self._calls[index] = len(self._calls)
            start = {"index": self._calls[index], "id": str(block.get("id")), "type": "function",
                     "function": {"name": self.names.get(str(block.get("name")), str(block.get("name"))),
                                  "arguments": ""}}
            out.append(self._chunk({"tool_calls": [start]}))
            given = block.get("input")
            self._arguments[index] = bool(given)
            if given:  # an input that came whole in the start (deltas follow only when it is empty)
                out.append(self._call_piece(index, {"arguments": _COMPACT_JSON.encode(given)}))

    def _delta(self, data: Dict[str, Any], out: List[str]) -> None:
        delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            if self._prefix and type(delta["text"]) is str:  # the usual piece: _chunk's bytes, only the text escaped
                out.append(f'data: {self._prefix}{{"content":{_json_text(delta["text"])}}},"logprobs":null,'
                           f'"finish_reason":null}}]}}\n\n')
            else:
                out.append(self._chunk({"content": str(delta["text"])}))
        elif kind == "thinking_delta" and delta.get("thinking"):
            out.append(self._chunk({"reasoning_content": str(delta["thinking"])}))
        elif kind == "input_json_delta" and delta.get("partial_json") and _is_int(data.get("index")) \
                and data["index"] in self._calls:
            self._arguments[data["index"]] = True
            out.append(self._call_piece(data["index"], {"arguments": str(delta["partial_json"])}))

    def _call_piece(self, index: int, function: Dict[str, Any]) -> str:
        return self._chunk({"tool_calls": [{"index": self._calls[index], "function": function}]})

# -- client dialect: OpenAI Responses -----------------------------------------------------------------
#
# Codex CLI (0.171.0, observed against a logging server) always streams, resends the whole history
# each turn with ``store: false``, and sends back every item it was given: reasoning items with their
# ``encrypted_content``, ``function_call`` items with a ``namespace`` for a namespace tool's function
# (it runs the call only when the namespace is named), ``custom_tool_call`` items for its freeform
# ``apply_patch``. agproxy keeps no responses: ``previous_response_id`` is refused, the history must
# come whole.

#: Joins a ``namespace`` tool's name and one of its functions' names into the one function name the
#: upstream sees (``multi_agent_v1`` + ``wait_agent`` -> ``multi_agent_v1__wait_agent``): tool names
#: upstreams accept are ``[A-Za-z0-9_-]`` only (no dot), and a double underscore is the convention
#: Claude Code already uses for MCP tools. A call comes back unflattened (its ``namespace`` and
#: ``name`` as the client declared them) by the table of the request's own tools, never by splitting.
RESPONSES_NAMESPACE_SEPARATOR = "__"
#: The start of every reasoning item's ``encrypted_content`` that agproxy wrote (see
#: :func:`responses_reasoning_content`); any other content (OpenAI's own, another gateway's) is dropped.
RESPONSES_REASONING_PREFIX = "agproxy.thinking.v1:"
#: ``max_tokens`` when the client gives no ``max_output_tokens`` (Codex never does): what Claude
#: Code asks of most models, within every current Claude model's output limit; an upstream with a
#: smaller window has it fitted by the healing (``fitted_max_tokens``).
RESPONSES_DEFAULT_MAX_TOKENS = 32000
#: The thinking budget for each ``reasoning.effort`` (``none`` turns thinking off); capped below
#: ``max_tokens``, and off when less than the smallest budget Anthropic takes fits.
RESPONSES_EFFORT_BUDGETS = {"minimal": 1024, "low": 4096, "medium": 12288, "high": 24576, "xhigh": 31999}
#: The one string field a ``custom`` (freeform) tool becomes as a function; a call's text is unwrapped from it.
RESPONSES_CUSTOM_INPUT = "input"
#: Deepest nesting of the JSON inside an ``encrypted_content`` agproxy wrote (one flat object).
_REASONING_JSON_DEPTH = 2
_RESPONSES_ROLES = ("user", "assistant", "system", "developer")
_RESPONSES_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")
#: Request fields that ask for state agproxy does not keep.
_RESPONSES_STATEFUL = {
    "previous_response_id": "agproxy keeps no responses; send the whole conversation in input (with store: "
                            "false, as Codex does)",
    "conversation": "agproxy keeps no conversations; send the whole conversation in input",
    "prompt": "agproxy keeps no stored prompts; send the instructions and input themselves",
}


def _responses_parts(content: Any, where: str) -> List[Dict[str, Any]]:
    """A message's or a tool output's content (a string or a list of parts) as Anthropic blocks:
    text parts as text (empty ones left out), ``input_image`` as images, ``input_file`` given inline
    as documents; a part that needs state (``file_id``) or that no upstream takes is a 400."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    _expect(isinstance(content, list), where, "must be a string or a list of content parts")
    blocks: List[Dict[str, Any]] = []
    for i, part in enumerate(content):
        at = f"{where}.{i}"
        _expect(isinstance(part, dict), at, "must be an object")
        kind = part.get("type")
        if kind in _RESPONSES_TEXT_PARTS or kind == "refusal":
            text = part.get("refusal" if kind == "refusal" else "text")
            _expect(isinstance(text, str), f"{at}.{'refusal' if kind == 'refusal' else 'text'}", "must be a string")
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "input_image":
            _expect(part.get("file_id") is None, f"{at}.file_id", "agproxy keeps no files; give the image as "
                    "image_url (a data: URL or an http(s) URL)")
            blocks.append(_chat_image(part.get("image_url"), f"{at}.image_url"))
        elif kind == "input_file" and isinstance(part.get("file_url"), str):
            url = part["file_url"]
            _expect(url.startswith(("http://", "https://")), f"{at}.file_url", "must be an http(s) URL")
            blocks.append({"type": "document", "source": {"type": "url", "url": url}})
        elif kind == "input_file":  # file_data as a data URL, file_id refused, as Chat Completions' file part
            blocks.append(_chat_file(part, at))
        else:
            raise InvalidRequest(f"{at}.type: {str(kind)[:40]!r} is not a content part agproxy can carry "
                                 "(input_text, output_text, refusal, input_image, input_file)")
    return blocks


def responses_reasoning_content(block: Dict[str, Any]) -> str:
    """The ``encrypted_content`` of the reasoning item that carries a thinking block.

    agproxy keeps nothing between requests, so a thinking block (its text and signature, or a
    redacted_thinking block's data) travels in the client's history, inside the item Codex gives back
    unchanged: :data:`RESPONSES_REASONING_PREFIX`, then the block as compact JSON in URL-safe
    base64. It is opaque to the client, not secret (the client saw the thinking in the summary);
    the upstream's signature is what vouches for it. :func:`responses_reasoning_block` reads it back
    exactly; a content without the prefix (one OpenAI or another server made), or one that does not
    decode to a thinking block, is not agproxy's, and its item is dropped from the request."""
    if block.get("type") == "redacted_thinking":
        kept = {"type": "redacted_thinking", "data": str(block.get("data") or "")}
    else:
        kept = {"type": "thinking", "thinking": str(block.get("thinking") or ""),
                "signature": str(block.get("signature") or "")}
    encoded = base64.urlsafe_b64encode(_COMPACT_JSON.encode(kept).encode("utf-8", "replace"))
    return RESPONSES_REASONING_PREFIX + encoded.decode("ascii")


def responses_reasoning_block(content: Any) -> Optional[Dict[str, Any]]:
    """The thinking or redacted_thinking block an ``encrypted_content`` agproxy wrote carries, or
    None when it is not one agproxy wrote (see :func:`responses_reasoning_content`)."""
    if not isinstance(content, str) or not content.startswith(RESPONSES_REASONING_PREFIX):
        return None
    try:
        raw = base64.b64decode(content[len(RESPONSES_REASONING_PREFIX):], altchars=b"-_", validate=True)
        block = loads_strict(raw, repair_surrogates=False, max_depth=_REASONING_JSON_DEPTH)
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None
    if not isinstance(block, dict):
        return None
    if block.get("type") == "thinking" and set(block) == {"type", "thinking", "signature"} and \
            isinstance(block["thinking"], str) and isinstance(block["signature"], str):
        return block
    if block.get("type") == "redacted_thinking" and set(block) == {"type", "data"} and isinstance(block["data"], str):
        return block
    return None


def responses_tool_table(body: Dict[str, Any]) -> Dict[str, Tuple[str, Optional[str], str]]:
    """What each function name the upstream sees stands for in the client's terms: ``(kind,
    namespace, name)`` with kind ``function``, ``custom`` (a freeform tool, its text in the one
    string field :data:`RESPONSES_CUSTOM_INPUT`) or ``namespace`` (a namespace's function, flattened
    with :data:`RESPONSES_NAMESPACE_SEPARATOR`); a name Anthropic refuses travels made valid
    (:func:`_anthropic_tool_name`). Tools that are not well formed are left out here (the request
    translator refuses them)."""
    table: Dict[str, Tuple[str, Optional[str], str]] = {}
    tools = body.get("tools") if isinstance(body, dict) else None
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            continue
        kind = tool.get("type")
        if kind in ("function", "custom"):
            table[_anthropic_tool_name(tool["name"])] = (kind, None, tool["name"])
        elif kind == "namespace" and isinstance(tool.get("tools"), list):
            for inner in tool["tools"]:
                if isinstance(inner, dict) and inner.get("type", "function") == "function" and \
                        isinstance(inner.get("name"), str) and inner["name"]:
                    flat = tool["name"] + RESPONSES_NAMESPACE_SEPARATOR + inner["name"]
                    table[_anthropic_tool_name(flat)] = ("namespace", tool["name"], inner["name"])
    return table


def _responses_function(tool: Dict[str, Any], name: str, where: str, note: str = "") -> Dict[str, Any]:
    """A function tool (or a namespace's function) as an Anthropic tool."""
    parameters = tool.get("parameters")
    _expect(parameters is None or isinstance(parameters, dict), f"{where}.parameters", "must be an object")
    description = tool.get("description")
    _expect(description is None or isinstance(description, str), f"{where}.description", "must be a string")
    out: Dict[str, Any] = {"name": name, "input_schema": parameters or {"type": "object", "properties": {}}}
    text = "\n".join(t for t in (note, description) if t)
    if text:
        out["description"] = text
    return out


def _responses_custom_tool(tool: Dict[str, Any], where: str) -> Dict[str, Any]:
    """A freeform ``custom`` tool as a function of one string field: its grammar, if it has one,
    goes into the description, since no upstream of agproxy constrains output by a grammar."""
    description = tool.get("description")
    _expect(description is None or isinstance(description, str), f"{where}.description", "must be a string")
    texts = [description] if description else []
    texts.append(f"Put the whole raw text this tool takes into the string field {RESPONSES_CUSTOM_INPUT!r} "
                 "(it reaches the tool exactly as written).")
    form = tool.get("format")
    if isinstance(form, dict) and form.get("type") == "grammar" and isinstance(form.get("definition"), str):
        texts.append(f"The text follows this {str(form.get('syntax') or '')[:20]} grammar:\n{form['definition']}")
    schema = {"type": "object", "properties": {RESPONSES_CUSTOM_INPUT: {"type": "string"}},
              "required": [RESPONSES_CUSTOM_INPUT]}
    return {"name": tool["name"], "description": "\n\n".join(texts), "input_schema": schema}


def _responses_tools(tools: Any, changes: Dict[str, int]) -> List[Dict[str, Any]]:
    """The request's tools as Anthropic tools: functions as they are, namespaces flattened, custom
    tools as one-string functions; every other kind is a hosted tool (``web_search``,
    ``tool_search``, ``file_search``, ``mcp``...) that no upstream of agproxy runs: left out, and
    counted in ``changes`` as ``responses_hosted_tool_dropped`` (the sanitizer's change counts)."""
    _expect(isinstance(tools, list), "tools", "must be a list")
    out: List[Dict[str, Any]] = []
    seen: Set[str] = set()

    def add(tool: Dict[str, Any], where: str) -> None:
        _expect(tool["name"] not in seen, f"{where}.name", f"{tool['name'][:80]!r} is declared twice (a namespace's "
                f"functions are named namespace{RESPONSES_NAMESPACE_SEPARATOR}function)")
        seen.add(tool["name"])
        out.append(tool)

    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        _expect(isinstance(tool, dict), where, "must be an object")
        kind = tool.get("type")
        if kind in ("function", "custom", "namespace"):
            _expect(isinstance(tool.get("name"), str) and tool["name"] != "", f"{where}.name",
                    "must be a non-empty string")
        if kind == "function":
            add(_responses_function(tool, tool["name"], where), where)
        elif kind == "custom":
            add(_responses_custom_tool(tool, where), where)
        elif kind == "namespace":
            inner = tool.get("tools")
            _expect(isinstance(inner, list), f"{where}.tools", "must be a list")
            about = tool.get("description")
            note = f"(in {tool['name']}: {about})" if isinstance(about, str) and about else ""
            for j, function in enumerate(inner):
                at = f"{where}.tools.{j}"
                _expect(isinstance(function, dict), at, "must be an object")
                if function.get("type", "function") != "function":
                    _count(changes, "responses_hosted_tool_dropped")
                    continue
                _expect(isinstance(function.get("name"), str) and function["name"] != "", f"{at}.name",
                        "must be a non-empty string")
                flat = tool["name"] + RESPONSES_NAMESPACE_SEPARATOR + function["name"]
                add(_responses_function(function, flat, at, note), at)
        elif isinstance(kind, str):
            _count(changes, "responses_hosted_tool_dropped")
        else:
            raise InvalidRequest(f"{where}.type: must be a string")
    return out


def _responses_tool_choice(choice: Any, names: Set[str], parallel: Any) -> Tuple[Dict[str, Any], Optional[Set[str]]]:
    """``tool_choice`` (and ``parallel_tool_calls``) as Anthropic's, and the tool names an
    ``allowed_tools`` choice keeps (None: all)."""
    _expect(parallel is None or isinstance(parallel, bool), "parallel_tool_calls", "must be true or false")
    allowed: Optional[Set[str]] = None
    if choice is None or choice == "auto":
        out: Dict[str, Any] = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}, None
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") in ("function", "custom"):
        name = choice.get("name")
        _expect(isinstance(name, str), "tool_choice.name", "must be a string")
        if isinstance(choice.get("namespace"), str):
            name = choice["namespace"] + RESPONSES_NAMESPACE_SEPARATOR + name
        _expect(name in names, "tool_choice.name", f"{str(name)[:80]!r} is not one of the request's tools")
        out = {"type": "tool", "name": name}
    elif isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        _expect(choice.get("mode", "auto") in ("auto", "required"), "tool_choice.mode", "must be auto or required")
        listed = choice.get("tools")
        _expect(isinstance(listed, list), "tool_choice.tools", "must be a list")
        allowed = set()
        for tool in listed:
            if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                prefix = tool["namespace"] + RESPONSES_NAMESPACE_SEPARATOR if isinstance(tool.get("namespace"), str) \
                    else ""
                allowed.add(prefix + tool["name"])
                if tool.get("type") == "namespace":  # a whole namespace: each of its functions
                    allowed.update(n for n in names if n.startswith(tool["name"] + RESPONSES_NAMESPACE_SEPARATOR))
        out = {"type": "any" if choice.get("mode") == "required" else "auto"}
    else:
        raise InvalidRequest("tool_choice: must be auto, none, required, a function or custom tool by name, or "
                             "allowed_tools (agproxy's upstreams run no hosted tools)")
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out, allowed


def _responses_text_format(text: Any) -> Optional[Dict[str, Any]]:
    """``text.format`` as the internal ``output_config.format`` (None for plain text)."""
    if text is None:
        return None
    _expect(isinstance(text, dict), "text", "must be an object")
    form = text.get("format")
    if form is None:
        return None
    _expect(isinstance(form, dict), "text.format", "must be an object")
    kind = form.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_schema", "schema": {"type": "object"}}
    if kind == "json_schema":
        _expect(isinstance(form.get("schema"), dict), "text.format.schema", "must be an object")
        return {"type": "json_schema", "schema": form["schema"]}
    raise InvalidRequest("text.format.type: must be text, json_object or json_schema")


def _responses_call_id(item: Dict[str, Any], where: str) -> str:
    call_id = item.get("call_id")
    _expect(isinstance(call_id, str) and call_id != "", f"{where}.call_id", "must be a non-empty string")
    return call_id


class _ResponsesTurns:
    """The conversation being built: Anthropic turns with strict user/assistant alternation (a
    block for the role of the last turn joins it), and the system texts in order."""

    def __init__(self) -> None:
        self.system: List[str] = []
        self.messages: List[Dict[str, Any]] = []

    def add(self, role: str, blocks: List[Dict[str, Any]]) -> None:
        if not blocks:
            return
        if self.messages and self.messages[-1]["role"] == role:
            self.messages[-1]["content"].extend(blocks)
        else:
            self.messages.append({"role": role, "content": list(blocks)})


def _responses_item(item: Any, where: str, turns: _ResponsesTurns, changes: Dict[str, int]) -> None:
    """One ``input`` item into ``turns``."""
    _expect(isinstance(item, dict), where, "must be an object")
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        _expect(role in _RESPONSES_ROLES, f"{where}.role", f"must be one of {', '.join(_RESPONSES_ROLES)}")
        blocks = _responses_parts(item.get("content"), f"{where}.content")
        if role in ("system", "developer"):
            _expect(all(b["type"] == "text" for b in blocks), f"{where}.content",
                    f"a {role} message can hold only text (it becomes the system prompt)")
            turns.system.extend(b["text"] for b in blocks)
        else:
            turns.add(role, blocks)
    elif kind == "function_call":
        call_id = _responses_call_id(item, where)
        name, namespace, arguments = item.get("name"), item.get("namespace"), item.get("arguments", "")
        _expect(isinstance(name, str) and name != "", f"{where}.name", "must be a non-empty string")
        _expect(namespace is None or isinstance(namespace, str), f"{where}.namespace", "must be a string")
        _expect(isinstance(arguments, str), f"{where}.arguments", "must be a string (JSON text)")
        if namespace:
            name = namespace + RESPONSES_NAMESPACE_SEPARATOR + name
        turns.add("assistant", [{"type": "tool_use", "id": call_id, "name": _anthropic_tool_name(name),
                                 "input": parse_tool_arguments(arguments)}])
    elif kind == "custom_tool_call":
        call_id = _responses_call_id(item, where)
        _expect(isinstance(item.get("name"), str) and item["name"] != "", f"{where}.name", "must be a non-empty string")
        _expect(isinstance(item.get("input"), str), f"{where}.input", "must be a string")
        turns.add("assistant", [{"type": "tool_use", "id": call_id, "name": _anthropic_tool_name(item["name"]),
                                 "input": {RESPONSES_CUSTOM_INPUT: item["input"]}}])
    elif kind in ("function_call_output", "custom_tool_call_output"):
        call_id = _responses_call_id(item, where)
        output = item.get("output")
        result: Dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
        content = output if isinstance(output, str) else _responses_parts(output, f"{where}.output")
        if content:  # an empty output is a result without content (Anthropic refuses an empty text)
            result["content"] = content
        if item.get("status") == "incomplete":
            result["is_error"] = True
        turns.add("user", [result])
    elif kind == "reasoning":
        block = responses_reasoning_block(item.get("encrypted_content"))
        if block is None:
            _count(changes, "responses_foreign_reasoning_dropped")
        else:
            turns.add("assistant", [block])
    elif kind == "item_reference":
        raise InvalidRequest(f"{where}.type: agproxy keeps no items to refer to; send the item itself")
    elif isinstance(kind, str):
        # the hosted tools' calls and results (web_search_call, ...) and items of other servers
        # (compaction): nothing an Anthropic upstream could read
        _count(changes, "responses_item_dropped")
    else:
        raise InvalidRequest(f"{where}.type: must be a string")


def responses_request_to_anthropic(body: Dict[str, Any], changes: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    """A Responses API request (``POST /v1/responses``) as the internal Anthropic Messages request.

    ``instructions`` and every ``system``/``developer`` message become the system prompt, in order
    (Anthropic has one); user and assistant messages become turns (text, images, inline files),
    ``function_call``/``custom_tool_call`` items assistant ``tool_use`` blocks,
    ``*_call_output`` items user ``tool_result`` blocks, reasoning items agproxy wrote their thinking
    blocks again; consecutive items of one role make one turn. Tools: see :func:`_responses_tools`.
    ``reasoning.effort`` becomes a thinking budget (:data:`RESPONSES_EFFORT_BUDGETS`),
    ``max_output_tokens`` ``max_tokens`` (default :data:`RESPONSES_DEFAULT_MAX_TOKENS`),
    ``text.format`` ``output_config.format``. ``store``, ``include``, ``prompt_cache_key``,
    ``client_metadata``, ``metadata`` and the like are taken and ignored. What is left out is counted
    in ``changes`` (hosted tools, foreign reasoning items, hosted tools' items). Raises
    :class:`InvalidRequest` naming the field for what cannot be carried: state agproxy does not keep
    (``previous_response_id``, ``conversation``, ``prompt``, ``item_reference``, ``file_id``),
    ``background``, a malformed field."""
    changes = changes if changes is not None else {}
    for key, why in _RESPONSES_STATEFUL.items():
        _expect(body.get(key) in (None, ""), key, why)
    _expect(not body.get("background"), "background", "agproxy answers while the client waits; send "
            "background: false")
    model = body.get("model")
    _expect(isinstance(model, str) and model != "", "model", "must be a non-empty string")
    turns = _ResponsesTurns()
    instructions = body.get("instructions")
    _expect(instructions is None or isinstance(instructions, str), "instructions", "must be a string")
    if instructions:
        turns.system.append(instructions)
    items = body.get("input")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    _expect(isinstance(items, list), "input", "must be a string or a list of items")
    for i, item in enumerate(items):
        _responses_item(item, f"input.{i}", turns, changes)
    _expect(bool(turns.messages), "input", "must hold at least one user or assistant message")
    max_tokens = body.get("max_output_tokens")
    _expect(max_tokens is None or (_is_int(max_tokens) and max_tokens >= 1), "max_output_tokens",
            "must be a positive integer")
    _expect(max_tokens is None or max_tokens <= MAX_OUTPUT_TOKENS, "max_output_tokens",
            f"must be at most {MAX_OUTPUT_TOKENS} (no model writes more)")
    out: Dict[str, Any] = {"model": model, "max_tokens": max_tokens or RESPONSES_DEFAULT_MAX_TOKENS,
                           "messages": turns.messages}
    system = [t for t in turns.system if t]
    if system:
        out["system"] = "\n\n".join(system)
    if body.get("tools") is not None:
        tools = _responses_tools(body["tools"], changes)
        choice, allowed = _responses_tool_choice(body.get("tool_choice"), {t["name"] for t in tools},
                                                 body.get("parallel_tool_calls"))
        if allowed is not None:
            tools = [t for t in tools if t["name"] in allowed]
        if tools:  # each under a name Anthropic takes (the tool table gives the client's back)
            out["tools"] = [dict(tool, name=_anthropic_tool_name(tool["name"])) for tool in tools]
            if choice.get("type") == "tool":
                choice["name"] = _anthropic_tool_name(choice["name"])
            out["tool_choice"] = choice
    _responses_reasoning(body.get("reasoning"), out)
    if "thinking" in out and _responses_loop_without_thinking(turns.messages):
        # Anthropic refuses thinking on in a tool loop whose call came without it (its reasoning
        # item made elsewhere, or thinking off at that turn): thinking waits for the next user turn
        del out["thinking"]
        _count(changes, "responses_thinking_off_in_tool_loop")
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            _expect(_is_number(body[key]), key, "must be a number")
            out[key] = body[key]
    form = _responses_text_format(body.get("text"))
    if form is not None:
        out["output_config"] = {"format": form}
    stream = body.get("stream", False)
    _expect(isinstance(stream, bool), "stream", "must be true or false")
    out["stream"] = stream
    user = body.get("safety_identifier") or body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user[:256]}
    return out  # validated as every internal body is, by the handler (Server._generate)


def _responses_loop_without_thinking(messages: List[Dict[str, Any]]) -> bool:
    """True when the conversation ends in a tool loop (an assistant turn with calls, then their
    results) whose assistant turn does not open with a thinking block."""
    if len(messages) < 2 or messages[-1]["role"] != "user":
        return False
    if not all(b.get("type") == "tool_result" for b in messages[-1]["content"]):
        return False
    blocks = messages[-2]["content"]
    return blocks[0].get("type") not in ("thinking", "redacted_thinking")


def _responses_reasoning(reasoning: Any, out: Dict[str, Any]) -> None:
    """``reasoning.effort`` as a thinking budget below ``max_tokens`` (none: no thinking)."""
    if reasoning is None:
        return
    _expect(isinstance(reasoning, dict), "reasoning", "must be an object")
    effort = reasoning.get("effort")
    if effort is None or effort == "none":
        return
    _expect(effort in RESPONSES_EFFORT_BUDGETS, "reasoning.effort",
            f"must be none or one of {', '.join(RESPONSES_EFFORT_BUDGETS)}")
    budget = min(RESPONSES_EFFORT_BUDGETS[effort], out["max_tokens"] - 1)
    if budget >= _MIN_THINKING_BUDGET:
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}


#: OpenAI's words (``type``, ``code``) for each Anthropic error type agproxy answers with. An
#: overload in a stream (``response.failed``) is said as ``server_error``, not OpenAI's
#: ``server_is_overloaded``: Codex 0.171.0 takes that one as final ("Selected model is at
#: capacity") and stops, while it retries the turn on a server_error, and agproxy cannot retry a
#: stream begun. An overload answered before any stream is another matter (:func:`responses_error_body`).
_RESPONSES_ERRORS = {
    "invalid_request_error": ("invalid_request_error", None),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "authentication_error": ("invalid_request_error", "invalid_api_key"),
    "permission_error": ("invalid_request_error", "permission_denied"),
    "not_found_error": ("invalid_request_error", "not_found"),
    "billing_error": ("insufficient_quota", "insufficient_quota"),
    "rate_limit_error": ("requests", "rate_limit_exceeded"),
    "api_error": ("server_error", "server_error"),
    "overloaded_error": ("server_error", "server_error"),
}
#: An upstream's words for a prompt larger than the model's window (Anthropic's, OpenAI-compatible
#: servers', Gemini's): said to the client with OpenAI's code for it, ``context_length_exceeded``.
_RESPONSES_TOO_LONG = _LazyPattern(r"prompt is too long|context length|context window|maximum context|"
                                   r"input token count .* exceeds", re.IGNORECASE)
#: The field an agproxy message names first (``input.3.call_id: must be a string``).
_RESPONSES_PARAM = _LazyPattern(r"^([A-Za-z_][A-Za-z0-9_.]*): ")


def _responses_error(error_type: str, message: str) -> Dict[str, Any]:
    """The ``error`` object of an error body or a failed response: message, type, param, code."""
    kind, code = _RESPONSES_ERRORS.get(error_type, ("server_error", None))
    if error_type == "invalid_request_error" and _RESPONSES_TOO_LONG.search(message):
        code = "context_length_exceeded"
    param = _RESPONSES_PARAM.match(message) if error_type == "invalid_request_error" else None
    return {"message": message, "type": kind, "param": param.group(1) if param else None, "code": code}


def responses_error_body(status: int, error_type: str, message: str) -> Dict[str, Any]:
    """An agproxy error as the Responses API words it: ``{"error": {"message", "type", "param",
    "code"}}`` (``status`` is the HTTP status it goes with; the error type decides the words). An
    overload is OpenAI's ``server_is_overloaded`` here (with 503, :func:`responses_error_status`):
    agproxy has tried every attempt it may already, and Codex 0.171.0 tries that five times and
    stops, where it tried a ``server_error`` five times five (30 requests a turn, 90 upstream)."""
    if error_type not in _RESPONSES_ERRORS:
        error_type = error_type_for_status(status)
    error = _responses_error(error_type, message)
    if error_type == "overloaded_error":
        error["code"] = "server_is_overloaded"
    return {"error": error}


#: 4xx a retry may change (a timeout, a conflict, a rate limit): Codex CLI may retry them as they are.
_RESPONSES_RETRIED_4XX = (408, 409, 429)


def responses_error_status(status: int) -> int:
    """The status of an agproxy error on ``/v1/responses``, as Codex CLI 0.171.0 acts on it
    (codex-rs/codex-api/src/api_bridge.rs, map_api_error, and CodexErr::is_retryable in
    codex-rs/protocol/src/error.rs; observed the same): a 400 is InvalidRequest, final, and it
    shows the body; any other 4xx but 429 is UnexpectedStatus, which it retries five times (a 403
    or 401: six requests in 6 s, in vain); a 503 whose code is ``server_is_overloaded`` is
    ServerOverloaded, final after its transport's five tries, where a 529 or 500 is tried five
    times five (30 requests a turn, each retried by agproxy: 90 upstream). So a 4xx that retrying
    cannot change is said as 400 (the body keeps its type and code), an overload as 503."""
    if 400 < status < 500 and status not in _RESPONSES_RETRIED_4XX:
        return 400
    return overload_status(status)


def _responses_usage(usage: Dict[str, Any], reasoning_tokens: int) -> Dict[str, Any]:
    """Anthropic usage as the Responses API's: its input counts the cache's tokens too, the read
    ones as ``cached_tokens``, the written ones as ``cache_write_tokens``; ``reasoning_tokens`` is
    an estimate from the thinking's text, since Anthropic counts thinking within ``output_tokens``
    without saying how much."""
    read = _token_count(usage.get("cache_read_input_tokens"))
    written = _token_count(usage.get("cache_creation_input_tokens"))
    total_in = _token_count(usage.get("input_tokens")) + read + written
    total_out = _token_count(usage.get("output_tokens"))
    return {"input_tokens": total_in, "input_tokens_details": {"cached_tokens": read, "cache_write_tokens": written},
            "output_tokens": total_out,
            "output_tokens_details": {"reasoning_tokens": min(reasoning_tokens, total_out)},
            "total_tokens": total_in + total_out}


def _responses_item_id(prefix: str) -> str:
    """A fresh id for an output item (``msg``, ``rs``, ``fc``, ``ctc``) or a response (``resp``)."""
    return f"{prefix}_{os.urandom(16).hex()}"


def _responses_reasoning_item(block: Dict[str, Any], item_id: str) -> Dict[str, Any]:
    """A thinking or redacted_thinking block as a reasoning item: its text as the summary Codex
    shows, the block itself in ``encrypted_content`` (always there: with nothing kept, it is how
    the block comes back)."""
    text = block.get("thinking") if block.get("type") == "thinking" else ""
    summary = [{"type": "summary_text", "text": text}] if isinstance(text, str) and text else []
    return {"type": "reasoning", "id": item_id, "summary": summary,
            "encrypted_content": responses_reasoning_content(block)}


def _responses_custom_text(arguments: str) -> str:
    """A freeform tool's text from the arguments of the one-string function it was offered as
    (the arguments as they are when the model wrote something else)."""
    try:
        value = loads_strict(arguments)
    except ValueError:
        return arguments
    if isinstance(value, dict) and isinstance(value.get(RESPONSES_CUSTOM_INPUT), str):
        return value[RESPONSES_CUSTOM_INPUT]
    return arguments


def _responses_call_item_id(name: str, tools: Dict[str, Tuple[str, Optional[str], str]]) -> str:
    """A fresh id for the call item of a tool_use named ``name``: ``ctc_`` for a freeform tool's, else ``fc_``."""
    return _responses_item_id("ctc" if tools.get(name, ("function",))[0] == "custom" else "fc")


def _responses_call_item(call_id: str, name: str, arguments: str, item_id: str,
                         tools: Dict[str, Tuple[str, Optional[str], str]]) -> Dict[str, Any]:
    """A tool_use as the client's call item: a ``function_call`` (with its ``namespace`` when the
    function is a namespace's) or a ``custom_tool_call`` with its text unwrapped."""
    kind, namespace, client_name = tools.get(name, ("function", None, name))
    if kind == "custom":
        return {"type": "custom_tool_call", "id": item_id, "status": "completed", "call_id": call_id,
                "name": client_name, "input": _responses_custom_text(arguments)}
    item = {"type": "function_call", "id": item_id, "status": "completed", "call_id": call_id,
            "name": client_name, "arguments": arguments}
    if namespace:
        item["namespace"] = namespace
    return item


def _responses_text_part(text: str) -> Dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _responses_message_item(item_id: str, parts: List[Dict[str, Any]], status: str) -> Dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": parts}


def _responses_end(stop_reason: Any) -> Tuple[str, Optional[Dict[str, str]]]:
    """The response's status for an Anthropic stop reason, and its ``incomplete_details``."""
    if stop_reason == "max_tokens":
        return "incomplete", {"reason": "max_output_tokens"}
    if stop_reason == "refusal":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _responses_object(response_id: str, created_at: int, model: str, request: Dict[str, Any], status: str,
                      output: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The response object, with the request's settings as the Responses API echoes them."""
    reasoning = request.get("reasoning") if isinstance(request.get("reasoning"), dict) else {}
    return {"id": response_id, "object": "response", "created_at": created_at, "status": status,
            "background": False, "error": None, "incomplete_details": None,
            "instructions": request.get("instructions"), "max_output_tokens": request.get("max_output_tokens"),
            "model": model, "output": output, "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "previous_response_id": None, "reasoning": {"effort": reasoning.get("effort"),
                                                        "summary": reasoning.get("summary")},
            "store": False, "temperature": request.get("temperature"), "top_p": request.get("top_p"),
            "text": request.get("text") if isinstance(request.get("text"), dict) else {"format": {"type": "text"}},
            "tool_choice": request.get("tool_choice", "auto"), "tools": request.get("tools") or [],
            "truncation": "disabled", "usage": None, "metadata": request.get("metadata") or {}}


def anthropic_message_to_responses(message: Dict[str, Any], request: Optional[Dict[str, Any]] = None, *,
                                   model: Optional[str] = None, created_at: int = 0,
                                   response_id: Optional[str] = None) -> Dict[str, Any]:
    """A whole Anthropic Message as the Responses API's response object: consecutive text blocks as
    one assistant message item, thinking as reasoning items (see :func:`responses_reasoning_content`),
    tool_use as call items in the client's terms (``request``'s tools say which were namespaced or
    freeform); ``incomplete`` for max_tokens (and a refusal), ``usage`` in OpenAI's terms.
    ``created_at`` is the Unix time the caller passes in; ``model`` defaults to the message's."""
    request = request or {}
    tools = responses_tool_table(request)
    output: List[Dict[str, Any]] = []
    parts: List[Dict[str, Any]] = []
    thinking_tokens = 0
    for block in message.get("content") or []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            if not parts:
                output.append(_responses_message_item(_responses_item_id("msg"), parts, "completed"))
            parts.append(_responses_text_part(str(block.get("text") or "")))
            continue
        if kind not in ("thinking", "redacted_thinking", "tool_use"):
            continue  # server tools' blocks: agproxy offers none
        parts = []
        if kind == "tool_use":
            arguments = json.dumps(block.get("input") if isinstance(block.get("input"), dict) else {},
                                   ensure_ascii=False)
            name = str(block.get("name") or "")
            output.append(_responses_call_item(str(block.get("id") or new_tool_id()), name, arguments,
                                               _responses_call_item_id(name, tools), tools))
        else:
            thinking_tokens += estimate_text_tokens(str(block.get("thinking") or ""))
            output.append(_responses_reasoning_item(block, _responses_item_id("rs")))
    status, incomplete = _responses_end(message.get("stop_reason"))
    response = _responses_object(response_id or _responses_item_id("resp"), created_at,
                                 model or str(message.get("model") or ""), request, status, output)
    response["incomplete_details"] = incomplete
    usage = message.get("usage") if isinstance(message.get("usage"), dict) else {}
    response["usage"] = _responses_usage(usage, thinking_tokens)
    return response


#: The most text (JSON-escaped UTF-8 bytes, all its text blocks together) a Responses stream holds to
#: repeat in its closing events (``output_text.done``, ``content_part.done``, ``output_item.done``,
#: ``response.completed``), which the other routes need not hold at all. A stream whose text passes
#: it ends there as ``response.incomplete`` (``max_output_tokens``), its closing events carrying the
#: text sent so far, and the rest of the answer is read and dropped: the openai SDK takes that as a
#: finished response, Codex as one cut short. The largest answer a current model writes (128k
#: tokens) is about 0.5 MB, so only a broken or hostile upstream comes near; 16 MiB is also the
#: largest event agproxy takes from an upstream (MAX_SSE_EVENT_BYTES).
RESPONSES_MAX_HELD_TEXT_BYTES = 16 * 1024 * 1024
#: The size of the parts a held text is written in when a closing event repeats it: the client
#: takes each before the next is made, so a repeat costs no more than this beside the text held.
_HELD_TEXT_PART_BYTES = 256 * 1024


class _HeldText:
    """The text of one text block of a Responses stream, held once as the JSON-escaped UTF-8
    bytes (no quotes) that every closing event repeating it writes as they are (see
    :class:`_StreamParts`); it stands where the text goes in the items the encoder keeps."""

    __slots__ = ("escaped",)

    def __init__(self) -> None:
        self.escaped = bytearray()

    def add(self, escaped: bytes) -> None:
        self.escaped += escaped

    def parts(self) -> Iterator[bytes]:
        view = memoryview(self.escaped)
        try:
            for at in range(0, len(view), _HELD_TEXT_PART_BYTES):
                yield bytes(view[at:at + _HELD_TEXT_PART_BYTES])
        finally:
            view.release()


class _StreamParts:
    """A batch of events as the client gets it: bytes, and where an event repeats a held text,
    that text, written part by part only when :meth:`parts` gets to it."""

    def __init__(self) -> None:
        self._parts: List[Union[bytearray, _HeldText]] = []

    def __iadd__(self, data: bytes) -> _StreamParts:
        if not self._parts or isinstance(self._parts[-1], _HeldText):
            self._parts.append(bytearray())
        self._parts[-1] += data  # type: ignore[operator]
        return self

    def hold(self, text: _HeldText) -> None:
        self._parts.append(text)

    def parts(self) -> Iterator[bytes]:
        for part in self._parts:
            if isinstance(part, _HeldText):
                yield from part.parts()
            elif part:
                yield bytes(part)


class ResponsesStreamEncoder(StreamEncoder):
    """The internal Anthropic events in, the Responses API's event stream out (SSE bytes).

    Every event carries ``sequence_number``, counting from 0: ``response.created`` and
    ``response.in_progress`` first; then per item ``response.output_item.added``, its deltas and
    ``response.output_item.done`` (a run of text blocks is one message item, each block a content
    part: ``content_part.added``, ``output_text.delta``/``done``, ``content_part.done``; a thinking
    block a reasoning item whose text streams as ``reasoning_summary_text.delta`` and whose
    ``output_item.done`` carries the ``encrypted_content``; a tool_use a ``function_call``, its
    arguments as ``function_call_arguments.delta``/``done``, or for a freeform tool a
    ``custom_tool_call``, its text as one ``custom_tool_call_input.delta`` and ``done`` once the
    arguments are whole, since the text must be unwrapped from them); last ``response.completed``
    with usage, or ``response.incomplete`` (max_tokens), or ``response.failed`` (:meth:`error`).
    Each event is encoded as it is read: how the events are split into batches changes nothing.
    A text block's text is held once (:class:`_HeldText`, at most RESPONSES_MAX_HELD_TEXT_BYTES)
    and written into each closing event that repeats it only as that event goes out
    (:meth:`encode_parts`). ``request`` is the client's own request (its tools say which calls
    were namespaced or freeform, its settings are echoed); ``created_at`` is the Unix time the
    caller passes in."""

    def __init__(self, model: str, request: Optional[Dict[str, Any]] = None, *, created_at: int = 0,
                 response_id: Optional[str] = None) -> None:
        self.model = model
        self.request = request or {}
        self.created_at = created_at
        self.response_id = response_id or _responses_item_id("resp")
        self.tools = responses_tool_table(self.request)
        self.started = False
        self.finished = False
        self._sequence = 0
        self._output: List[Dict[str, Any]] = []  # the items done, in order
        self._items = 0  # output items added so far: the next one's output_index
        self._blocks: Dict[int, Dict[str, Any]] = {}  # the open Anthropic blocks, by index
        self._message: Optional[Dict[str, Any]] = None  # the open message item (a run of text blocks)
        self._usage: Dict[str, Any] = {}
        self._stop_reason: Any = None
        self._thinking_tokens = 0
        self._held_bytes = 0  # the text held, all blocks together (RESPONSES_MAX_HELD_TEXT_BYTES)
        # a held text is encoded as a marker no text can spell (128 fresh random bits), cut out afterwards
        self._marker = f"agproxy-held-{os.urandom(16).hex()}-"
        self._marked: List[_HeldText] = []
        self._json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=self._mark)
        self._marks = re.compile(re.escape(f'"{self._marker}') + r'(\d+)"')

    # -- the bytes ---------------------------------------------------------------------------------

    def _mark(self, value: Any) -> str:
        if not isinstance(value, _HeldText):
            raise TypeError(f"{type(value).__name__} is not JSON")
        self._marked.append(value)
        return f"{self._marker}{len(self._marked) - 1}"

    def _emit(self, out: _StreamParts, name: str, payload: Dict[str, Any]) -> None:
        """Write one event as :func:`encode_sse_json` would, each held text in it as its own part."""
        event = {"type": name, "sequence_number": self._sequence}
        event.update(payload)
        self._sequence += 1
        if "\n" in name or "\r" in name:
            raise ValueError("an SSE event name cannot contain a line break")
        self._marked.clear()
        data = f"event: {name}\ndata: {self._json.encode(event)}\n\n"
        done = 0
        for match in self._marks.finditer(data) if self._marked else ():
            out += (data[done:match.start()] + '"').encode("utf-8", "replace")
            out.hold(self._marked[int(match.group(1))])
            out += b'"'
            done = match.end()
        out += data[done:].encode("utf-8", "replace")

    def _response(self, status: str) -> Dict[str, Any]:
        return _responses_object(self.response_id, self.created_at, self.model, self.request, status,
                                 list(self._output))

    def _start(self, out: _StreamParts) -> None:
        if not self.started:
            self.started = True
            self._emit(out, "response.created", {"response": self._response("in_progress")})
            self._emit(out, "response.in_progress", {"response": self._response("in_progress")})

    def _add_item(self, out: _StreamParts, item: Dict[str, Any]) -> int:
        index = self._items
        self._items += 1
        self._emit(out, "response.output_item.added", {"output_index": index, "item": item})
        return index

    def _done_item(self, out: _StreamParts, index: int, item: Dict[str, Any]) -> None:
        self._output.append(item)
        self._emit(out, "response.output_item.done", {"output_index": index, "item": item})

    # -- the events --------------------------------------------------------------------------------

    def encode(self, events: List[Event]) -> bytes:
        """The client's SSE bytes for a batch of events (b"" when they say nothing yet)."""
        return b"".join(self.encode_parts(events))

    def encode_parts(self, events: List[Event]) -> Iterator[bytes]:
        """:meth:`encode`'s bytes in parts: the events are read now, and each held text a closing
        event repeats is written into its part as the part is taken."""
        out = _StreamParts()
        for event in events:
            if self.finished:
                break
            if event.name == "ping":
                continue
            payload = event.data if isinstance(event.data, dict) else {}
            self._start(out)
            if event.name == "message_start":
                message = payload.get("message") if isinstance(payload.get("message"), dict) else {}
                if isinstance(message.get("usage"), dict):
                    merge_usage(self._usage, message["usage"])
            elif event.name == "content_block_start":
                self._block_start(out, payload)
            elif event.name == "content_block_delta":
                self._block_delta(out, payload)
            elif event.name == "content_block_stop":
                state = self._blocks.pop(payload.get("index"), None)  # type: ignore[arg-type]
                if state is not None:
                    self._block_stop(out, state)
            elif event.name == "message_delta":
                delta = payload.get("delta") if isinstance(payload.get("delta"), dict) else {}
                self._stop_reason = delta.get("stop_reason", self._stop_reason)
                if isinstance(payload.get("usage"), dict):
                    merge_usage(self._usage, payload["usage"])
            elif event.name == "message_stop":
                self._finish(out)
            elif event.name == "error":
                error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
                self._fail(out, str(error.get("type") or "api_error"), str(error.get("message") or "upstream error"))
        return out.parts()

    def _block_start(self, out: _StreamParts, payload: Dict[str, Any]) -> None:
        index = payload.get("index")
        block = payload.get("content_block") if isinstance(payload.get("content_block"), dict) else {}
        kind = block.get("type")
        if not _is_int(index) or index in self._blocks:
            return
        if kind != "text":
            self._close_message(out)
        if kind == "text":
            if self._message is None:
                item_id = _responses_item_id("msg")
                self._message = {"id": item_id, "parts": [], "open": 0,
                                 "index": self._add_item(out, _responses_message_item(item_id, [], "in_progress"))}
            message = self._message
            state = {"kind": "text", "text": _HeldText(), "content_index": len(message["parts"]) + message["open"]}
            message["open"] += 1
            self._emit(out, "response.content_part.added", {
                "item_id": message["id"], "output_index": message["index"], "content_index": state["content_index"],
                "part": _responses_text_part("")})
            self._blocks[index] = state
            if isinstance(block.get("text"), str) and block["text"]:
                self._text(out, state, block["text"])
        elif kind in ("thinking", "redacted_thinking"):
            item_id = _responses_item_id("rs")
            state = {"kind": kind, "id": item_id, "pieces": [], "signature": [], "part": False,
                     "data": str(block.get("data") or "")}
            if isinstance(block.get("signature"), str):
                state["signature"].append(block["signature"])
            state["index"] = self._add_item(out, {"type": "reasoning", "id": item_id, "summary": []})
            self._blocks[index] = state
            if kind == "thinking" and isinstance(block.get("thinking"), str) and block["thinking"]:
                self._thinking(out, state, block["thinking"])
        elif kind == "tool_use":
            name = str(block.get("name") or "")
            call_id = str(block.get("id") or new_tool_id())
            item_id = _responses_call_item_id(name, self.tools)
            start = _responses_call_item(call_id, name, "", item_id, self.tools)
            start["status"] = "in_progress"
            given = block.get("input")
            state = {"kind": "tool", "id": item_id, "call_id": call_id, "name": name, "pieces": [],
                     "custom": start["type"] == "custom_tool_call",
                     "given": json.dumps(given, ensure_ascii=False) if isinstance(given, dict) and given else ""}
            state["index"] = self._add_item(out, start)
            self._blocks[index] = state
        else:
            self._blocks[index] = {"kind": "other"}  # server tools' blocks: agproxy offers none

    def _block_delta(self, out: _StreamParts, payload: Dict[str, Any]) -> None:
        state = self._blocks.get(payload.get("index"))  # type: ignore[arg-type]
        delta = payload.get("delta") if isinstance(payload.get("delta"), dict) else {}
        if state is None:
            return
        kind = delta.get("type")
        if kind == "text_delta" and state["kind"] == "text" and isinstance(delta.get("text"), str):
            self._text(out, state, delta["text"])
        elif kind == "thinking_delta" and state["kind"] == "thinking" and isinstance(delta.get("thinking"), str):
            self._thinking(out, state, delta["thinking"])
        elif kind == "signature_delta" and state["kind"] == "thinking" and isinstance(delta.get("signature"), str):
            state["signature"].append(delta["signature"])
        elif kind == "input_json_delta" and state["kind"] == "tool" and isinstance(delta.get("partial_json"), str):
            text = delta["partial_json"]
            if text:
                state["pieces"].append(text)
                if not state["custom"]:
                    self._emit(out, "response.function_call_arguments.delta", {
                        "item_id": state["id"], "output_index": state["index"], "delta": text})

    def _text(self, out: _StreamParts, state: Dict[str, Any], text: str) -> None:
        if not text or self._message is None:
            return
        quoted = _json_text(text)
        escaped = quoted[1:-1].encode("utf-8", "replace")
        if self._held_bytes + len(escaped) > RESPONSES_MAX_HELD_TEXT_BYTES:
            self._stop_reason = "max_tokens"  # the client is told as of an answer cut for length
            self._finish(out)
            return
        self._held_bytes += len(escaped)
        state["text"].add(escaped)
        item_id, output_index, content_index = self._message["id"], self._message["index"], state["content_index"]
        if type(item_id) is str and type(output_index) is int and type(content_index) is int:
            # the usual event, written as _emit writes it, from a template with only the strings escaped
            out += (f'event: response.output_text.delta\ndata: {{"type":"response.output_text.delta",'
                    f'"sequence_number":{self._sequence:d},"item_id":{_json_text(item_id)},'
                    f'"output_index":{output_index:d},"content_index":{content_index:d},"delta":{quoted},'
                    f'"logprobs":[]}}\n\n').encode("utf-8", "replace")
            self._sequence += 1
            return
        self._emit(out, "response.output_text.delta", {
            "item_id": item_id, "output_index": output_index, "content_index": content_index, "delta": text,
            "logprobs": []})

    def _thinking(self, out: _StreamParts, state: Dict[str, Any], text: str) -> None:
        if not text:
            return
        where = {"item_id": state["id"], "output_index": state["index"], "summary_index": 0}
        if not state["part"]:
            state["part"] = True
            self._emit(out, "response.reasoning_summary_part.added",
                       dict(where, part={"type": "summary_text", "text": ""}))
        state["pieces"].append(text)
        self._thinking_tokens += estimate_text_tokens(text)
        self._emit(out, "response.reasoning_summary_text.delta", dict(where, delta=text))

    def _block_stop(self, out: _StreamParts, state: Dict[str, Any]) -> None:
        kind = state["kind"]
        if kind == "text":
            message = self._message
            if message is None:
                return
            text = state["text"]
            where = {"item_id": message["id"], "output_index": message["index"],
                     "content_index": state["content_index"]}
            self._emit(out, "response.output_text.done", dict(where, text=text, logprobs=[]))
            part = _responses_text_part(text)
            self._emit(out, "response.content_part.done", dict(where, part=part))
            message["parts"].append(part)
            message["open"] -= 1
        elif kind in ("thinking", "redacted_thinking"):
            text = "".join(state["pieces"])
            if state["part"]:
                where = {"item_id": state["id"], "output_index": state["index"], "summary_index": 0}
                self._emit(out, "response.reasoning_summary_text.done", dict(where, text=text))
                self._emit(out, "response.reasoning_summary_part.done",
                           dict(where, part={"type": "summary_text", "text": text}))
            block = {"type": "redacted_thinking", "data": state["data"]} if kind == "redacted_thinking" else \
                {"type": "thinking", "thinking": text, "signature": "".join(state["signature"])}
            self._done_item(out, state["index"], _responses_reasoning_item(block, state["id"]))
        elif kind == "tool":
            arguments = "".join(state["pieces"]) or state["given"] or "{}"
            where = {"item_id": state["id"], "output_index": state["index"]}
            item = _responses_call_item(state["call_id"], state["name"], arguments, state["id"], self.tools)
            if state["custom"]:
                if item["input"]:
                    self._emit(out, "response.custom_tool_call_input.delta", dict(where, delta=item["input"]))
                self._emit(out, "response.custom_tool_call_input.done", dict(where, input=item["input"]))
            else:
                if not state["pieces"]:  # the deltas add up to the arguments done says
                    self._emit(out, "response.function_call_arguments.delta", dict(where, delta=arguments))
                self._emit(out, "response.function_call_arguments.done",
                           dict(where, name=item["name"], arguments=arguments))
            self._done_item(out, state["index"], item)

    def _close_message(self, out: _StreamParts) -> None:
        """End the open message item (its text blocks still open ended first)."""
        if self._message is None:
            return
        for index in [i for i, s in self._blocks.items() if s["kind"] == "text"]:
            self._block_stop(out, self._blocks.pop(index))
        message, self._message = self._message, None
        self._done_item(out, message["index"], _responses_message_item(message["id"], message["parts"], "completed"))

    def _finish(self, out: _StreamParts) -> None:
        for index in sorted(self._blocks):
            if self._blocks[index]["kind"] != "text":
                self._block_stop(out, self._blocks.pop(index))
        self._close_message(out)
        self._blocks.clear()
        status, incomplete = _responses_end(self._stop_reason)
        response = self._response(status)
        response["incomplete_details"] = incomplete
        response["usage"] = _responses_usage(self._usage, self._thinking_tokens)
        self._emit(out, f"response.{status}", {"response": response})
        self.finished = True

    def ping(self) -> bytes:
        """A keep-alive the client skips: an SSE comment (Codex's and the SDK's parsers ignore it)."""
        return b"" if self.finished else b": keep-alive\n\n"

    def error(self, error_type: str, message: str) -> bytes:
        """How a stream that broke after it began ends: ``response.failed`` with the error in
        OpenAI's words (its ``code`` tells Codex whether to retry); nothing more is encoded after it."""
        out = _StreamParts()
        self._fail(out, error_type, message)
        return b"".join(out.parts())

    def _fail(self, out: _StreamParts, error_type: str, message: str) -> None:
        if self.finished:
            return
        self._start(out)
        response = self._response("failed")
        failure = _responses_error(error_type, message)
        response["error"] = {"code": failure["code"] or failure["type"], "message": message}
        response["usage"] = _responses_usage(self._usage, self._thinking_tokens)
        self._emit(out, "response.failed", {"response": response})
        self.finished = True


# -- client dialect: Gemini generateContent -----------------------------------------------------------

#: The answer length a Gemini request gets when it names none (Gemini's default is the model's
#: whole output, which the internal form cannot leave open): room for a coding agent's whole-file
#: write in one tool call (Gemini CLI sends no ``maxOutputTokens``), within what every current
#: Claude model writes. A request that thinks gets its budget on top.
GEMINI_CLIENT_DEFAULT_MAX_TOKENS = 16384
#: ``thinkingLevel`` as a thinking budget in tokens (the budgets the Chat dialect gives its
#: efforts); ``minimal`` thinks as little as the model can, which Anthropic's form says as none.
_GEMINI_LEVEL_BUDGETS = {"minimal": 0, "low": 2048, "medium": 8192, "high": 24576}
#: The budget of a thinking the client leaves to the model (``thinkingBudget: -1``, a level left
#: unspecified, or ``includeThoughts`` alone): Gemini CLI's own budget for its 2.5 models.
GEMINI_DYNAMIC_THINKING_BUDGET = 8192
#: The fields of a Gemini ``Part`` that hold its data (one of them, exactly, per part).
_GEMINI_PART_DATA = ("text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
                     "codeExecutionResult")
#: Keys of Gemini's OpenAPI-subset ``Schema`` that mean the same in JSON Schema (copied as they are).
_GEMINI_SCHEMA_SAME = ("format", "title", "description", "enum", "required", "minItems", "maxItems",
                       "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "minimum",
                       "maximum", "default")
#: An Anthropic tool name and tool_use id (Gemini's may hold ``.`` and ``:``; ids from Gemini CLI do).
_ANTHROPIC_TOOL_NAME = _LazyPattern(r"[A-Za-z0-9_-]{1,64}")
_ANTHROPIC_TOOL_ID = _LazyPattern(r"[A-Za-z0-9_-]{1,128}")
#: Anthropic's stop reasons as Gemini finish reasons.
_GEMINI_FINISH_OF = {"max_tokens": "MAX_TOKENS", "model_context_window_exceeded": "MAX_TOKENS", "refusal": "SAFETY"}
#: agproxy's (Anthropic's) error types as google.rpc status names; Gemini CLI retries 429 and 5xx.
_GEMINI_ERROR_STATUS = {"invalid_request_error": "INVALID_ARGUMENT", "request_too_large": "INVALID_ARGUMENT",
                        "authentication_error": "UNAUTHENTICATED", "permission_error": "PERMISSION_DENIED",
                        "billing_error": "PERMISSION_DENIED", "not_found_error": "NOT_FOUND",
                        "rate_limit_error": "RESOURCE_EXHAUSTED", "overloaded_error": "UNAVAILABLE",
                        "timeout_error": "UNAVAILABLE"}
#: The google.rpc details of an error that Gemini CLI acts on (:func:`gemini_error_body`).
_GEMINI_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
_GEMINI_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
#: The raw start of a thought signature agproxy made: the thinking blocks of the answer step that
#: a function call ended, as JSON after it, the whole in base64 (Gemini's signatures are base64,
#: and the google-genai SDK decodes them as bytes). Gemini CLI keeps a call's signature in its
#: history and sends it back, and drops thought parts: the call's signature carries the thinking.
_GEMINI_PACKED_THINKING = b"agproxy-thinking/1\n"
#: Google's own tools, which run at Google: dropped (each counted by name in the notes).
_GEMINI_GOOGLE_TOOLS = frozenset(("googleSearch", "googleSearchRetrieval", "codeExecution", "urlContext", "retrieval",
                                  "computerUse", "fileSearch", "googleMaps", "enterpriseWebSearch", "mcpServers"))
#: What Gemini's clients may ask a model (the answer to ``GET /v1beta/models``).
_GEMINI_CLIENT_METHODS = ["generateContent", "streamGenerateContent", "countTokens"]
#: The context window and longest answer listed for a model agproxy knows nothing of.
_GEMINI_LISTED_WINDOW = 200_000
_GEMINI_LISTED_OUTPUT = 64_000


def gemini_request_to_anthropic(body: Dict[str, Any], model: str, *, stream: bool = False,
                                notes: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    """A Gemini ``generateContent`` request (``model`` from the path, ``models/`` or not; ``stream``
    for ``streamGenerateContent``) as the internal Anthropic Messages request.

    ``contents`` become strict user/assistant turns (``model`` is the assistant; function
    responses are tool_result blocks, first in their turn); ``systemInstruction`` the system
    prompt; ``functionDeclarations`` tools (``parameters`` converted from Gemini's schema,
    ``parametersJsonSchema`` as it is); ``toolConfig`` the tool_choice; ``generationConfig`` the
    limits, sampling, stop sequences, thinking and structured output. A thought signature agproxy
    made brings back the thinking blocks it stands for; any other is dropped. What cannot be
    carried (``candidateCount`` other than 1, ``cachedContent``, a file Google holds, a media type
    Anthropic does not read) is an :class:`InvalidRequest` naming the field; Google's own tools
    (search, code execution) are dropped and counted in ``notes``, as is everything else left out."""
    notes = notes if notes is not None else {}
    model = _gemini_model_name(model)
    _expect(body.get("cachedContent") is None, "cachedContent", "content cached at Google cannot be served here")
    names = _gemini_declared_names(body.get("tools"))
    system = _gemini_system(body.get("systemInstruction"))
    messages = _gemini_contents(body.get("contents"), names, notes)
    out: Dict[str, Any] = {"model": model, "messages": messages}
    if system:
        out["system"] = system
    tools, choice = _gemini_client_tools(body.get("tools"), body.get("toolConfig"), names, notes)
    if tools:
        out["tools"] = tools
        if choice != {"type": "auto"}:
            out["tool_choice"] = choice
    config = body.get("generationConfig")
    _expect(config is None or isinstance(config, dict), "generationConfig", "must be an object")
    config = config or {}
    count = config.get("candidateCount")
    _expect(count is None or (_is_int(count) and count == 1), "generationConfig.candidateCount",
            f"only 1 candidate per request is supported, got {str(count)[:40]}")
    limit = _gemini_int(config, "maxOutputTokens", 1, MAX_OUTPUT_TOKENS)
    budget = _gemini_thinking_budget(config.get("thinkingConfig"), limit)
    if budget is not None and (out.get("tool_choice", {}).get("type") in ("any", "tool") or _thinking_lost(messages)):
        budget = None  # Anthropic refuses thinking with a forced call, and a tool loop whose thinking is lost
        _count(notes, "thinking_dropped")
    if budget is not None:
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if (config.get("thinkingConfig") or {}).get("includeThoughts") is False:
            out["thinking"]["display"] = "omitted"
    out["max_tokens"] = limit if limit is not None else GEMINI_CLIENT_DEFAULT_MAX_TOKENS + (budget or 0)
    _gemini_sampling(config, out, budget is not None, notes)
    schema = _gemini_response_schema(config)
    if schema is not None:
        out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    out["stream"] = bool(stream)
    return out


def gemini_count_request_to_anthropic(body: Dict[str, Any], model: str,
                                      notes: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    """A Gemini ``countTokens`` request (``contents``, or a whole ``generateContentRequest``) as
    the internal form of a count: the model, system prompt, messages, tools and tool_choice of
    what :func:`gemini_request_to_anthropic` makes of it (no limits, sampling or thinking)."""
    inner = body.get("generateContentRequest")
    if inner is not None:
        _expect(isinstance(inner, dict), "generateContentRequest", "must be an object")
        _expect(body.get("contents") is None, "contents", "cannot be given beside generateContentRequest")
        body = inner
    full = gemini_request_to_anthropic(body, model, notes=notes)
    return {key: full[key] for key in ("model", "system", "messages", "tools", "tool_choice") if key in full}


def gemini_client_tool_names(body: Dict[str, Any]) -> Dict[str, str]:
    """The client's function names that travel under another name (one Anthropic refuses: a ``.``
    or ``:`` in it), by that name: what the encoder needs to give the client its own names back."""
    try:
        declared = _gemini_declared_names(body.get("tools"))
    except InvalidRequest:
        return {}
    return {anthropic: name for name, anthropic in declared.items() if anthropic != name}


def gemini_include_thoughts(body: Dict[str, Any]) -> bool:
    """Whether the client asked to see the model's thoughts (``thinkingConfig.includeThoughts``;
    Gemini's default is not to)."""
    config = body.get("generationConfig")
    thinking = config.get("thinkingConfig") if isinstance(config, dict) else None
    return isinstance(thinking, dict) and thinking.get("includeThoughts") is True


def _gemini_model_name(model: Any) -> str:
    _expect(isinstance(model, str) and bool(model), "model", "must be named in the path (models/NAME:generateContent)")
    name = model[len("models/"):] if model.startswith("models/") else model
    _expect(0 < len(name) <= MAX_MODEL_CHARS, "model", f"must be 1 to {MAX_MODEL_CHARS} characters")
    return name


def _anthropic_tool_name(name: str) -> str:
    """A Gemini function name as an Anthropic tool name: itself where Anthropic takes it, else the
    same made valid and marked with a short hash of the original (one name, one result)."""
    if _ANTHROPIC_TOOL_NAME.fullmatch(name):
        return name
    mark = hashlib.sha256(name.encode("utf-8", "replace")).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:55] + "_" + mark


def _anthropic_call_id(call_id: str, name: str) -> str:
    """A function call's id as a tool_use id. Gemini CLI gives each call the id ``NAME__ID`` (ID
    the one agproxy gave it), in the call and in its response alike: the prefix goes, so the
    upstream gets back the id it made; an id Anthropic would refuse is made valid, the same way
    for a call and its response."""
    if name and call_id.startswith(name + "__") and len(call_id) > len(name) + 2:
        call_id = call_id[len(name) + 2:]
    if _ANTHROPIC_TOOL_ID.fullmatch(call_id):
        return call_id
    mark = hashlib.sha256(call_id.encode("utf-8", "replace")).hexdigest()[:12]
    return re.sub(r"[^A-Za-z0-9_-]", "_", call_id)[:100] + "_" + mark


def _gemini_declared_names(tools: Any) -> Dict[str, str]:
    """Every declared function's name, with the name it travels under (see :func:`_anthropic_tool_name`)."""
    names: Dict[str, str] = {}
    if tools is None:
        return names
    _expect(isinstance(tools, list), "tools", "must be a list")
    for i, tool in enumerate(tools):
        _expect(isinstance(tool, dict), f"tools[{i}]", "must be an object")
        declarations = tool.get("functionDeclarations")
        if declarations is None:
            continue
        _expect(isinstance(declarations, list), f"tools[{i}].functionDeclarations", "must be a list")
        for j, declaration in enumerate(declarations):
            at = f"tools[{i}].functionDeclarations[{j}]"
            _expect(isinstance(declaration, dict), at, "must be an object")
            name = declaration.get("name")
            _expect(isinstance(name, str) and bool(name), f"{at}.name", "must be a non-empty string")
            _expect(name not in names, f"{at}.name", f"{name[:80]!r} is declared twice")
            names[name] = _anthropic_tool_name(name)
    return names


def _gemini_system(instruction: Any) -> str:
    """``systemInstruction`` (a Content of text parts, or a string as some clients send it) as text."""
    if instruction is None or isinstance(instruction, str):
        return instruction or ""
    _expect(isinstance(instruction, dict), "systemInstruction", "must be a Content object")
    parts = instruction.get("parts")
    _expect(isinstance(parts, list), "systemInstruction.parts", "must be a list")
    texts = []
    for i, part in enumerate(parts):
        _expect(isinstance(part, dict) and isinstance(part.get("text"), str), f"systemInstruction.parts[{i}]",
                "must be a text part (a system instruction takes only text)")
        texts.append(part["text"])
    return "\n".join(text for text in texts if text)


def _gemini_contents(contents: Any, names: Dict[str, str], notes: Dict[str, int]) -> List[Dict[str, Any]]:
    """``contents`` as Anthropic messages: consecutive turns of one role merged, tool results
    first in each user turn, the conversation opened by a user turn."""
    _expect(isinstance(contents, list) and bool(contents), "contents", "must be a non-empty list")
    turns: List[Dict[str, Any]] = []
    calls: List[Tuple[str, str]] = []  # the last model turn's calls (id, name), for responses without ids
    for i, content in enumerate(contents):
        at = f"contents[{i}]"
        _expect(isinstance(content, dict), at, "must be an object")
        role = content.get("role", "user")
        _expect(role in ("user", "model", "function"), f"{at}.role", f"must be user or model, got {str(role)[:40]!r}")
        parts = content.get("parts")
        _expect(isinstance(parts, list), f"{at}.parts", "must be a list")
        if role == "model":
            blocks, calls = _gemini_model_blocks(parts, at, names, notes)
        else:
            blocks = _gemini_user_blocks(parts, at, names, calls, notes)
        if blocks:
            turns.append({"role": "assistant" if role == "model" else "user", "content": blocks})
    if not turns:
        raise InvalidRequest("contents: nothing to send (every part is empty)")
    merged = _merge_same_role(turns, notes)
    for turn in merged:  # a user turn's tool results go first, as Anthropic requires
        turn["content"] = ([b for b in turn["content"] if b["type"] == "tool_result"]
                           + [b for b in turn["content"] if b["type"] != "tool_result"])
    if merged[0]["role"] == "assistant":
        merged.insert(0, {"role": "user", "content": CONTINUATION_TEXT})
    return merged


def _gemini_part_kind(part: Any, at: str) -> str:
    """Which data field a part holds (exactly one, as Gemini requires)."""
    _expect(isinstance(part, dict), at, "must be an object")
    kinds = [key for key in _GEMINI_PART_DATA if key in part]
    _expect(len(kinds) == 1, at, f"must hold exactly one of {', '.join(_GEMINI_PART_DATA)}, got "
            f"{', '.join(kinds) if kinds else 'none'}")
    signature = part.get("thoughtSignature")
    _expect(signature is None or isinstance(signature, str), f"{at}.thoughtSignature", "must be a string")
    return kinds[0]


def _gemini_model_blocks(parts: List[Any], at: str, names: Dict[str, str],
                         notes: Dict[str, int]) -> Tuple[List[Dict[str, Any]], List[Tuple[str, str]]]:
    """A model turn's parts as assistant blocks, and its calls (tool_use id, client's name). The
    thinking a signature agproxy made stands for goes back where it was: before the step (the
    blocks after the previous call) whose call carries it. Thought text alone is left out:
    Anthropic refuses a thinking block without its signature."""
    blocks: List[Dict[str, Any]] = []
    calls: List[Tuple[str, str]] = []
    step_start = 0
    for j, part in enumerate(parts):
        where = f"{at}.parts[{j}]"
        kind = _gemini_part_kind(part, where)
        restored = _gemini_restored_thinking(part.get("thoughtSignature"), notes)
        if restored:
            blocks[step_start:step_start] = restored
            step_start += len(restored)
        if part.get("thought") is True:
            _count(notes, "thought_part_dropped")
        elif kind == "text":
            _expect(isinstance(part["text"], str), f"{where}.text", "must be a string")
            if part["text"]:
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "functionCall":
            call = part["functionCall"]
            _expect(isinstance(call, dict), f"{where}.functionCall", "must be an object")
            name, args, call_id = call.get("name"), call.get("args", {}), call.get("id")
            _expect(isinstance(name, str) and bool(name), f"{where}.functionCall.name", "must be a non-empty string")
            _expect(args is None or isinstance(args, dict), f"{where}.functionCall.args", "must be an object")
            _expect(call_id is None or isinstance(call_id, str), f"{where}.functionCall.id", "must be a string")
            tool_id = _anthropic_call_id(call_id, name) if call_id else f"call_{at[9:-1]}_{j}"
            blocks.append({"type": "tool_use", "id": tool_id, "name": names.get(name, _anthropic_tool_name(name)),
                           "input": args or {}})
            calls.append((tool_id, name))
            step_start = len(blocks)
        else:  # media, a function response, code a Google tool ran: not the model's to say
            _count(notes, f"model_{kind}_dropped")
    return blocks, calls


def _gemini_user_blocks(parts: List[Any], at: str, names: Dict[str, str], calls: List[Tuple[str, str]],
                        notes: Dict[str, int]) -> List[Dict[str, Any]]:
    """A user turn's parts as user blocks; a function response without an id answers the first
    call of its name (else the first) of the model turn before it that is not answered yet."""
    blocks: List[Dict[str, Any]] = []
    waiting = list(calls)
    for j, part in enumerate(parts):
        where = f"{at}.parts[{j}]"
        kind = _gemini_part_kind(part, where)
        if kind == "text":
            _expect(isinstance(part["text"], str), f"{where}.text", "must be a string")
            if part["text"] and part.get("thought") is not True:
                blocks.append({"type": "text", "text": part["text"]})
        elif kind in ("inlineData", "fileData"):
            blocks.append(_gemini_client_media(part[kind], f"{where}.{kind}", kind))
        elif kind == "functionResponse":
            blocks.append(_gemini_tool_result(part["functionResponse"], f"{where}.functionResponse", waiting))
        else:
            _count(notes, f"user_{kind}_dropped")
    return blocks


def _gemini_tool_result(response: Any, at: str, waiting: List[Tuple[str, str]]) -> Dict[str, Any]:
    """A ``functionResponse`` as a tool_result: Gemini CLI's ``{"output": ...}`` as its text,
    ``{"error": ...}`` as an error's, anything else as its JSON; media in its ``parts`` as images."""
    _expect(isinstance(response, dict), at, "must be an object")
    name, call_id, answer = response.get("name"), response.get("id"), response.get("response", {})
    _expect(isinstance(name, str), f"{at}.name", "must be a string")
    _expect(call_id is None or isinstance(call_id, str), f"{at}.id", "must be a string")
    _expect(answer is None or isinstance(answer, dict), f"{at}.response", "must be an object")
    if call_id:
        tool_id = _anthropic_call_id(call_id, name)
        waiting[:] = [c for c in waiting if c[0] != tool_id]
    else:
        match = next((c for c in waiting if c[1] == name), waiting[0] if waiting else None)
        _expect(match is not None, f"{at}.id", "is needed: no function call before it is left to answer")
        assert match is not None
        waiting.remove(match)
        tool_id = match[0]
    answer = answer or {}
    output, error = answer.get("output"), answer.get("error")
    is_error = False
    if set(answer) <= {"output", "error"} and isinstance(output, (str, type(None))) \
            and isinstance(error, (str, type(None))):
        is_error = bool(error)
        text = (error if is_error else output) or ""
    else:
        text = _COMPACT_JSON.encode(answer)
    content: List[Dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    media = response.get("parts")
    if media is not None:
        _expect(isinstance(media, list), f"{at}.parts", "must be a list")
        for k, item in enumerate(media):
            kind = _gemini_part_kind(item, f"{at}.parts[{k}]")
            _expect(kind in ("inlineData", "fileData"), f"{at}.parts[{k}]", "must hold inlineData or fileData")
            content.append(_gemini_client_media(item[kind], f"{at}.parts[{k}].{kind}", kind))
    result: Dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_id, "content": content}
    if is_error:
        result["is_error"] = True
    return result


def _gemini_client_media(data: Any, at: str, kind: str) -> Dict[str, Any]:
    """``inlineData`` (base64) or ``fileData`` (a URL) as an image or document block: the image
    types Anthropic reads, a PDF, or (inline) text; a file Google holds cannot be read here."""
    _expect(isinstance(data, dict), at, "must be an object")
    mime = data.get("mimeType")
    _expect(isinstance(mime, str) and bool(mime), f"{at}.mimeType", "must be a non-empty string")
    mime = mime.split(";")[0].strip().lower()
    if kind == "inlineData":
        payload = data.get("data")
        _expect(isinstance(payload, str), f"{at}.data", "must be a string (base64)")
        # the SDKs may send the URL-safe alphabet, without padding
        payload = payload.replace("-", "+").replace("_", "/") + "=" * (-len(payload) % 4)
        if mime in _CHAT_IMAGE_TYPES:
            return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": payload}}
        if mime == "application/pdf":
            return {"type": "document", "source": {"type": "base64", "media_type": mime, "data": payload}}
        if mime.startswith("text/") or mime in ("application/json", "application/xml"):
            try:
                text = base64.b64decode(payload, validate=True).decode("utf-8")
            except ValueError:
                raise InvalidRequest(f"{at}.data: is not base64 of UTF-8 text") from None
            return {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": text}}
        raise InvalidRequest(f"{at}.mimeType: {mime[:80]!r} cannot be read here; send an image "
                             f"({', '.join(_CHAT_IMAGE_TYPES)}), a PDF or text")
    uri = data.get("fileUri")
    _expect(isinstance(uri, str) and bool(uri), f"{at}.fileUri", "must be a non-empty string")
    _expect(uri.startswith(("https://", "http://")) and "generativelanguage.googleapis.com" not in uri,
            f"{at}.fileUri", "files uploaded to Google cannot be read here; send the file inline (inlineData) "
            "or as a public http(s) URL")
    if mime in _CHAT_IMAGE_TYPES:
        return {"type": "image", "source": {"type": "url", "url": uri}}
    _expect(mime == "application/pdf", f"{at}.mimeType", f"{mime[:80]!r} cannot be read from a URL here; "
            "send an image or a PDF")
    return {"type": "document", "source": {"type": "url", "url": uri}}


def _pack_thinking(blocks: List[Dict[str, Any]]) -> str:
    """Thinking blocks as a thought signature (see :data:`_GEMINI_PACKED_THINKING`)."""
    packed = _GEMINI_PACKED_THINKING + _COMPACT_JSON.encode(blocks).encode("utf-8", "replace")
    return base64.urlsafe_b64encode(packed).decode("ascii")


def _signature_bytes(signature: str) -> bytes:
    """A thought signature's bytes (base64 in either alphabet, padded or not); b"" for one that is
    not base64."""
    try:
        return base64.urlsafe_b64decode(signature.replace("+", "-").replace("/", "_") + "=" * (-len(signature) % 4))
    except ValueError:
        return b""


def _gemini_restored_thinking(signature: Any, notes: Dict[str, int]) -> List[Dict[str, Any]]:
    """The thinking blocks a thought signature agproxy made stands for; none for any other (Gemini
    CLI's ``skip_thought_signature_validator``, a real Gemini signature), which is dropped."""
    if not isinstance(signature, str) or not signature:
        return []
    raw = _signature_bytes(signature)
    if not raw.startswith(_GEMINI_PACKED_THINKING):
        if signature != GEMINI_SKIP_SIGNATURE:
            _count(notes, "foreign_thought_signature_dropped")
        return []
    try:
        blocks = loads_strict(raw[len(_GEMINI_PACKED_THINKING):], max_depth=3)
    except ValueError:
        blocks = None
    if not isinstance(blocks, list):
        _count(notes, "foreign_thought_signature_dropped")
        return []
    restored = []
    for block in blocks:
        if isinstance(block, dict) and block.get("type") == "thinking" and isinstance(block.get("thinking"), str) \
                and isinstance(block.get("signature"), str) and block["signature"]:
            restored.append({"type": "thinking", "thinking": block["thinking"], "signature": block["signature"]})
        elif isinstance(block, dict) and block.get("type") == "redacted_thinking" \
                and isinstance(block.get("data"), str):
            restored.append({"type": "redacted_thinking", "data": block["data"]})
    _count(notes, "thinking_restored", len(restored))
    return restored


def _thinking_lost(messages: List[Dict[str, Any]]) -> bool:
    """Whether the conversation is in a tool loop (it ends with tool results) whose last assistant
    turn has no thinking block first: with thinking on, Anthropic refuses that."""
    last = messages[-1]["content"]
    if not (isinstance(last, list) and any(b["type"] == "tool_result" for b in last)) or len(messages) < 2:
        return False
    before = messages[-2]["content"]
    return not (isinstance(before, list) and before and before[0]["type"] in ("thinking", "redacted_thinking"))


def json_schema_of_gemini(schema: Any, at: str) -> Dict[str, Any]:
    """A schema in Gemini's OpenAPI subset (``parameters``, ``responseSchema``: upper-case types,
    ``nullable``, ``example``, ``propertyOrdering``) as JSON Schema."""
    _expect(isinstance(schema, dict), at, "must be a schema object")
    out: Dict[str, Any] = {}
    kind = schema.get("type")
    if kind is not None:
        _expect(isinstance(kind, str), f"{at}.type", "must be a string")
        kind = kind.lower()
        if kind != "type_unspecified":
            _expect(kind in _GEMINI_TYPES or kind == "null", f"{at}.type", "must be one of "
                    f"{', '.join(t.upper() for t in sorted(_GEMINI_TYPES))}, got {schema['type'][:40]!r}")
            out["type"] = kind
    for key in _GEMINI_SCHEMA_SAME:
        value = schema.get(key)
        if value is None:
            continue
        if key.startswith(("min", "max")) and isinstance(value, str) and value.isdigit():
            value = int(value)  # proto3 JSON writes int64 as a string
        out[key] = value
    if out.get("format") == "enum":
        del out["format"]
    if "example" in schema:
        out["examples"] = [schema["example"]]
    properties = schema.get("properties")
    if properties is not None:
        _expect(isinstance(properties, dict), f"{at}.properties", "must be an object")
        out["properties"] = {name: json_schema_of_gemini(value, f"{at}.properties.{name}")
                             for name, value in properties.items()}
    if schema.get("items") is not None:
        out["items"] = json_schema_of_gemini(schema["items"], f"{at}.items")
    alternatives = schema.get("anyOf")
    if alternatives is not None:
        _expect(isinstance(alternatives, list), f"{at}.anyOf", "must be a list")
        out["anyOf"] = [json_schema_of_gemini(value, f"{at}.anyOf[{k}]") for k, value in enumerate(alternatives)]
    if schema.get("nullable") is True and out.get("type") not in (None, "null"):
        out["type"] = [out["type"], "null"]
    return out


def _lower_case_types(schema: Any) -> Any:
    """A JSON Schema with Gemini's upper-case type names (``"OBJECT"``) in lower case, as JSON
    Schema spells them: Gemini takes both, and Gemini CLI's routing call sends its
    ``responseJsonSchema`` that way. Everything else is kept as it is."""
    if isinstance(schema, list):
        return [_lower_case_types(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str) and value.lower() in _GEMINI_TYPES | {"null"}:
            out[key] = value.lower()
        elif key == "type" and isinstance(value, list):
            out[key] = [v.lower() if isinstance(v, str) and v.lower() in _GEMINI_TYPES | {"null"} else v for v in value]
        elif key in ("enum", "const", "default", "examples", "example"):
            out[key] = value  # values, not schemas
        elif key in ("properties", "patternProperties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {name: _lower_case_types(item) for name, item in value.items()}  # names, then schemas
        else:
            out[key] = _lower_case_types(value)
    return out


def _gemini_client_tools(tools: Any, tool_config: Any, names: Dict[str, str],
                         notes: Dict[str, int]) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """``tools`` (their function declarations; Google's own tools dropped) and ``toolConfig`` as
    Anthropic tools and tool_choice. ``allowedFunctionNames`` keeps only those tools offered."""
    out: List[Dict[str, Any]] = []
    for i, tool in enumerate(tools or []):
        for key in tool:  # Google's own tools: googleSearch, codeExecution, urlContext, ...
            if key != "functionDeclarations":
                _count(notes, f"{key}_dropped" if key in _GEMINI_GOOGLE_TOOLS else "unknown_tool_dropped")
        for j, declaration in enumerate(tool.get("functionDeclarations") or []):
            at = f"tools[{i}].functionDeclarations[{j}]"
            description = declaration.get("description")
            _expect(description is None or isinstance(description, str), f"{at}.description", "must be a string")
            parameters, json_schema = declaration.get("parameters"), declaration.get("parametersJsonSchema")
            _expect(parameters is None or json_schema is None, at,
                    "takes parameters or parametersJsonSchema, not both")
            if json_schema is not None:
                _expect(isinstance(json_schema, dict), f"{at}.parametersJsonSchema", "must be an object")
                schema, where = _lower_case_types(json_schema), f"{at}.parametersJsonSchema"
            elif parameters is not None:
                schema, where = json_schema_of_gemini(parameters, f"{at}.parameters"), f"{at}.parameters"
            else:
                schema, where = {"type": "object", "properties": {}}, at
            schema.setdefault("type", "object")
            _expect(schema["type"] == "object", f"{where}.type", "must be OBJECT (a function takes an object of "
                    "arguments)")
            converted: Dict[str, Any] = {"name": names[declaration["name"]], "input_schema": schema}
            if description:
                converted["description"] = description
            out.append(converted)
    return _gemini_tool_choice(tool_config, out, names)


def _gemini_tool_choice(tool_config: Any, tools: List[Dict[str, Any]],
                        names: Dict[str, str]) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """``toolConfig.functionCallingConfig`` (mode AUTO, ANY, NONE, VALIDATED; allowedFunctionNames)
    as Anthropic's tool_choice, with the tools it leaves offered."""
    if tool_config is None:
        return tools, {"type": "auto"}
    _expect(isinstance(tool_config, dict), "toolConfig", "must be an object")
    config = tool_config.get("functionCallingConfig")
    if config is None:
        return tools, {"type": "auto"}
    _expect(isinstance(config, dict), "toolConfig.functionCallingConfig", "must be an object")
    mode = config.get("mode", "AUTO")
    _expect(isinstance(mode, str) and mode.upper() in ("AUTO", "ANY", "NONE", "VALIDATED", "MODE_UNSPECIFIED"),
            "toolConfig.functionCallingConfig.mode", f"must be AUTO, ANY, NONE or VALIDATED, got {str(mode)[:40]!r}")
    mode = mode.upper()
    allowed = config.get("allowedFunctionNames")
    _expect(allowed is None or isinstance(allowed, list) and all(isinstance(n, str) and n in names for n in allowed),
            "toolConfig.functionCallingConfig.allowedFunctionNames", "must list declared function names")
    if allowed and mode != "NONE":
        kept = {names[n] for n in allowed}
        tools = [t for t in tools if t["name"] in kept]
    if not tools or mode == "NONE":
        return tools, {"type": "none"} if tools else {"type": "auto"}
    if mode == "ANY":
        return tools, {"type": "tool", "name": tools[0]["name"]} if len(tools) == 1 else {"type": "any"}
    return tools, {"type": "auto"}


def _gemini_int(config: Dict[str, Any], key: str, low: int, high: int) -> Optional[int]:
    value = config.get(key)
    if value is None:
        return None
    _expect(_is_int(value) and low <= value <= high, f"generationConfig.{key}", f"must be an integer from {low} "
            f"to {high}")
    return value


def _gemini_thinking_budget(thinking: Any, limit: Optional[int]) -> Optional[int]:
    """The thinking budget ``thinkingConfig`` asks for (None: no thinking). Within a limit the
    client set, thinking takes at most half of it (Gemini counts thoughts in ``maxOutputTokens``,
    Anthropic counts thinking in max_tokens), and none when that half is under Anthropic's minimum."""
    if thinking is None:
        return None
    _expect(isinstance(thinking, dict), "generationConfig.thinkingConfig", "must be an object")
    include = thinking.get("includeThoughts")
    _expect(include is None or isinstance(include, bool), "generationConfig.thinkingConfig.includeThoughts",
            "must be true or false")
    budget, level = thinking.get("thinkingBudget"), thinking.get("thinkingLevel")
    _expect(budget is None or level is None, "generationConfig.thinkingConfig",
            "thinkingBudget and thinkingLevel cannot both be set")
    if budget is not None:
        _expect(_is_int(budget) and -1 <= budget <= MAX_OUTPUT_TOKENS, "generationConfig.thinkingConfig.thinkingBudget",
                f"must be an integer from -1 to {MAX_OUTPUT_TOKENS}")
        tokens = GEMINI_DYNAMIC_THINKING_BUDGET if budget == -1 else budget
    elif level is not None:
        _expect(isinstance(level, str) and (level.lower() in _GEMINI_LEVEL_BUDGETS
                                            or level.upper() == "THINKING_LEVEL_UNSPECIFIED"),
                "generationConfig.thinkingConfig.thinkingLevel",
                f"must be one of {', '.join(n.upper() for n in _GEMINI_LEVEL_BUDGETS)}, got {str(level)[:40]!r}")
        tokens = _GEMINI_LEVEL_BUDGETS.get(level.lower(), GEMINI_DYNAMIC_THINKING_BUDGET)
    elif include:
        tokens = GEMINI_DYNAMIC_THINKING_BUDGET
    else:
        return None
    if tokens == 0:
        return None
    tokens = max(tokens, _MIN_THINKING_BUDGET)
    if limit is not None:
        tokens = min(tokens, limit // 2)
    return tokens if tokens >= _MIN_THINKING_BUDGET else None


def _gemini_sampling(config: Dict[str, Any], out: Dict[str, Any], thinking: bool, notes: Dict[str, int]) -> None:
    """temperature (Gemini's 0 to 2, within Anthropic's 0 to 1), topP, topK and stopSequences,
    checked. Newer Claude models refuse temperature and top_p together: temperature is kept. With
    thinking, temperature, top_k and a top_p under 0.95 are left out (Anthropic refuses them)."""
    temperature, top_p, top_k = config.get("temperature"), config.get("topP"), config.get("topK")
    _expect(temperature is None or _is_number(temperature) and 0 <= temperature <= 2,
            "generationConfig.temperature", "must be a number from 0 to 2")
    _expect(top_p is None or _is_number(top_p) and 0 <= top_p <= 1, "generationConfig.topP",
            "must be a number from 0 to 1")
    _expect(top_k is None or _is_int(top_k) and top_k >= 0, "generationConfig.topK", "must be a non-negative integer")
    if thinking:
        if top_p is not None and top_p >= 0.95:
            out["top_p"] = top_p
        _count(notes, "sampling_dropped_for_thinking", int(temperature is not None or top_k is not None))
    else:
        if temperature is not None:
            out["temperature"] = min(temperature, 1)
        elif top_p is not None:
            out["top_p"] = top_p
        _count(notes, "top_p_dropped", int(temperature is not None and top_p is not None))
        if top_k is not None:
            out["top_k"] = top_k
    stops = config.get("stopSequences")
    if stops is not None:
        _expect(isinstance(stops, list) and all(isinstance(s, str) for s in stops),
                "generationConfig.stopSequences", "must be a list of strings")
        stops = [s for s in stops if s.strip()]
        if stops:
            out["stop_sequences"] = stops


def _gemini_response_schema(config: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The structured-output schema ``responseMimeType: application/json`` asks for, with
    ``responseJsonSchema`` (JSON Schema, as it is) or ``responseSchema`` (Gemini's subset,
    converted); a bare JSON answer is any object. None for text."""
    mime = config.get("responseMimeType")
    json_schema, schema = config.get("responseJsonSchema"), config.get("responseSchema")
    _expect(mime is None or isinstance(mime, str), "generationConfig.responseMimeType", "must be a string")
    _expect(json_schema is None or schema is None, "generationConfig",
            "takes responseSchema or responseJsonSchema, not both")
    if mime in (None, "", "text/plain"):
        _expect(json_schema is None and schema is None, "generationConfig.responseMimeType",
                "must be application/json for a response schema")
        return None
    _expect(mime == "application/json", "generationConfig.responseMimeType",
            f"must be text/plain or application/json here, got {mime[:80]!r}")
    if json_schema is not None:
        _expect(isinstance(json_schema, dict), "generationConfig.responseJsonSchema", "must be an object")
        return _lower_case_types(json_schema)
    if schema is not None:
        return json_schema_of_gemini(schema, "generationConfig.responseSchema")
    return dict(ANY_JSON_OBJECT)


def _gemini_finish_reason(stop_reason: Any) -> str:
    return _GEMINI_FINISH_OF.get(str(stop_reason), "STOP")


def _gemini_usage_metadata(usage: Dict[str, Any], thought_tokens: int) -> Dict[str, int]:
    """Anthropic usage as ``usageMetadata``: the prompt counts cache reads and writes; the thoughts
    (estimated from their text: Anthropic counts them in output_tokens) come out of the candidates."""
    cached = upstream_count(usage.get("cache_read_input_tokens")) or 0
    prompt = ((upstream_count(usage.get("input_tokens")) or 0) + cached
              + (upstream_count(usage.get("cache_creation_input_tokens")) or 0))
    output = upstream_count(usage.get("output_tokens")) or 0
    thoughts = min(output, thought_tokens)
    metadata = {"promptTokenCount": prompt, "candidatesTokenCount": output - thoughts,
                "totalTokenCount": prompt + output}
    if cached:
        metadata["cachedContentTokenCount"] = cached
    if thoughts:
        metadata["thoughtsTokenCount"] = thoughts
    return metadata


def _gemini_response_id(message_id: Any) -> str:
    text = message_id if isinstance(message_id, str) and message_id else new_message_id()
    return text[4:] if text.startswith("msg_") else text


class _GeminiParts:
    """The Anthropic events of one answer as Gemini parts, one call of :meth:`take` per event:
    text as text parts, thinking as thought parts (when the client asked for them), each
    tool_use, once whole, as a ``functionCall`` part with the tool_use id as its id; the first
    call of each step carries the step's thinking blocks as its thought signature."""

    def __init__(self, names: Optional[Dict[str, str]], include_thoughts: bool) -> None:
        self.names = names or {}
        self.include_thoughts = include_thoughts
        self.response_id = ""
        self.usage: Dict[str, Any] = {}
        self.stop_reason: Optional[str] = None
        self.thought_tokens = 0
        self._thinking: List[Dict[str, Any]] = []  # the step's thinking blocks, whole
        self._open: Dict[int, Dict[str, Any]] = {}  # block index -> the block being written

    def take(self, event: Event) -> List[Dict[str, Any]]:
        """The parts one event gives (often none)."""
        name = event.name
        if name in ("ping", "message_stop", "error"):
            return []
        data = event.data
        index = data.get("index")
        if name == "message_start":
            message = data.get("message") if isinstance(data.get("message"), dict) else {}
            self.response_id = self.response_id or _gemini_response_id(message.get("id"))
            if isinstance(message.get("usage"), dict):
                merge_usage(self.usage, message["usage"])
        elif name == "message_delta":
            if isinstance(data.get("usage"), dict):
                merge_usage(self.usage, data["usage"])
            delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
            self.stop_reason = delta.get("stop_reason") or self.stop_reason
        elif name == "content_block_start" and _is_int(index):
            block = data.get("content_block") if isinstance(data.get("content_block"), dict) else {}
            return self._start(index, block)
        elif name == "content_block_delta" and _is_int(index) and index in self._open:
            delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
            return self._delta(self._open[index], delta)
        elif name == "content_block_stop" and _is_int(index) and index in self._open:
            return self._stop(self._open.pop(index))
        return []

    def _start(self, index: int, block: Dict[str, Any]) -> List[Dict[str, Any]]:
        kind = block.get("type")
        if kind == "text":
            self._open[index] = {"type": "text"}
            return self._delta(self._open[index], {"type": "text_delta", "text": block.get("text")})
        if kind == "thinking":
            self._open[index] = {"type": "thinking", "thinking": "", "signature": _text_or(block.get("signature"), "")}
            return self._delta(self._open[index], {"type": "thinking_delta", "thinking": block.get("thinking")})
        if kind == "redacted_thinking" and isinstance(block.get("data"), str):
            self._open[index] = {"type": "redacted_thinking", "data": block["data"]}
        elif kind == "tool_use":
            given = block.get("input")
            self._open[index] = {"type": "tool_use", "id": _text_or(block.get("id"), "") or new_tool_id(),
                                 "name": _text_or(block.get("name"), "unknown_tool"),
                                 "json": [_COMPACT_JSON.encode(given)] if isinstance(given, dict) and given else []}
        return []

    def _delta(self, block: Dict[str, Any], delta: Dict[str, Any]) -> List[Dict[str, Any]]:
        kind = delta.get("type")
        if kind == "text_delta" and block["type"] == "text" and isinstance(delta.get("text"), str) and delta["text"]:
            return [{"text": delta["text"]}]
        if kind == "thinking_delta" and block["type"] == "thinking" and isinstance(delta.get("thinking"), str) \
                and delta["thinking"]:
            block["thinking"] += delta["thinking"]
            self.thought_tokens += estimate_text_tokens(delta["thinking"])
            return [{"text": delta["thinking"], "thought": True}] if self.include_thoughts else []
        if kind == "signature_delta" and block["type"] == "thinking" and isinstance(delta.get("signature"), str):
            block["signature"] += delta["signature"]
        elif kind == "input_json_delta" and block["type"] == "tool_use" and isinstance(delta.get("partial_json"), str):
            block["json"].append(delta["partial_json"])
        return []

    def _stop(self, block: Dict[str, Any]) -> List[Dict[str, Any]]:
        if block["type"] == "thinking" and block["signature"] or block["type"] == "redacted_thinking":
            self._thinking.append(block)
        if block["type"] != "tool_use":
            return []
        name = self.names.get(block["name"], block["name"])
        call = {"name": name, "args": parse_tool_arguments("".join(block["json"])), "id": block["id"]}
        part: Dict[str, Any] = {"functionCall": call}
        if self._thinking:
            part["thoughtSignature"] = _pack_thinking(self._thinking)
            self._thinking = []
        return [part]

    def finish_reason(self) -> str:
        """The answer's finishReason (a call ends a Gemini answer with STOP)."""
        return _gemini_finish_reason(self.stop_reason)

    def usage_metadata(self) -> Dict[str, int]:
        """The answer's ``usageMetadata`` so far."""
        return _gemini_usage_metadata(self.usage, self.thought_tokens)


class GeminiStreamEncoder(StreamEncoder):
    """The internal Anthropic events of one answer as a ``streamGenerateContent`` stream: with
    ``sse`` (``alt=sse``, as Gemini CLI and the SDKs ask) a ``data: {GenerateContentResponse}``
    event per chunk, else one JSON array written as it goes (``[``, chunks separated by ``,``,
    ``]``). A chunk per piece of text or thought, a chunk per function call once whole, and a last
    chunk with the finishReason and usageMetadata; every chunk has the modelVersion (``model``,
    the name the client asked for) and the responseId (from the Message's id). Events are taken
    one at a time, so any batching of the same events gives the same bytes. ``names``: the
    client's function names by the names they travel under (:func:`gemini_client_tool_names`);
    ``include_thoughts``: whether thought text is shown (:func:`gemini_include_thoughts`)."""

    def __init__(self, model: str, *, sse: bool = True, names: Optional[Dict[str, str]] = None,
                 include_thoughts: bool = True) -> None:
        self.model = model
        self.sse = sse
        self.ended = False
        self._parts = _GeminiParts(names, include_thoughts)
        self._opened = False  # the JSON array's "[" is written
        self._chunks = 0
        self._tail_id = ""  # the response id that _tail, a chunk's JSON after its candidates, holds
        self._tail = ""

    def encode(self, events: List[Event]) -> bytes:
        """A batch of events as the client's bytes (b"" when nothing in it shows)."""
        out: List[str] = []
        for event in events:
            if self.ended:
                break
            if event.name == "error":
                error = event.data.get("error") if isinstance(event.data.get("error"), dict) else {}
                out.append(self._error(str(error.get("type") or "api_error"), str(error.get("message") or
                                                                                   "upstream error")))
                continue
            parts = self._parts.take(event)
            if parts:
                out.append(self._chunk(parts))
            if event.name == "message_stop":
                out.append(self._chunk([], final=True))
                out.append("" if self.sse else "]")
                self.ended = True
        return "".join(out).encode("utf-8", "replace")

    def ping(self) -> bytes:
        """A blank line: whitespace between SSE events and between a JSON array's elements is
        skipped by every parser (Gemini CLI's bundled SDK reads ``^\\s*data: ``; it would stall on an
        SSE comment)."""
        if self.ended:
            return b""
        return self._open_array().encode() + b"\n"

    def error(self, error_type: str, message: str) -> bytes:
        """The end of a stream that broke: Gemini's error JSON, bare on its own line, as Google
        writes an error that comes mid-stream (both SDKs raise it as an APIError); in a JSON array,
        the array's last element. Nothing after it."""
        if self.ended:
            return b""
        return self._error(error_type, message).encode("utf-8", "replace")

    def _error(self, error_type: str, message: str) -> str:
        self.ended = True
        body = _COMPACT_JSON.encode(gemini_error_body(_ERROR_STATUS.get(error_type, 500), error_type, message))
        if self.sse:
            return f"{body}\n"
        return f"{self._open_array()}{',' if self._chunks else ''}{body}]"

    def _open_array(self) -> str:
        if self.sse or self._opened:
            return ""
        self._opened = True
        return "["

    def _chunk(self, parts: List[Dict[str, Any]], final: bool = False) -> str:
        if not self._parts.response_id:
            self._parts.response_id = _gemini_response_id(None)
        if not final and len(parts) == 1 and len(parts[0]) == 1 and type(parts[0].get("text")) is str:
            # the usual chunk, a piece of text: the bytes below, only the text escaped
            if self._tail_id != self._parts.response_id:
                self._tail_id = self._parts.response_id
                self._tail = _COMPACT_JSON.encode({"modelVersion": self.model, "responseId": self._tail_id})[1:]
            text = (f'{{"candidates":[{{"content":{{"role":"model","parts":[{{"text":{_json_text(parts[0]["text"])}'
                    f'}}]}},"index":0}}],{self._tail}')
        else:
            candidate: Dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
            response: Dict[str, Any] = {"candidates": [candidate]}
            if final:
                candidate["finishReason"] = self._parts.finish_reason()
                response["usageMetadata"] = self._parts.usage_metadata()
            response.update(modelVersion=self.model, responseId=self._parts.response_id)
            text = _COMPACT_JSON.encode(response)
        self._chunks += 1
        if self.sse:
            return f"data: {text}\n\n"
        return f"{self._open_array()}{',' if self._chunks > 1 else ''}\r\n{text}"


def anthropic_message_to_gemini(message: Dict[str, Any], model: str, *, names: Optional[Dict[str, str]] = None,
                                include_thoughts: bool = True) -> Dict[str, Any]:
    """A whole Anthropic Message as a ``generateContent`` answer, by the stream encoder's rules
    (one set of rules for both): its parts in order, consecutive text (and thought) parts joined,
    the finishReason, usageMetadata, modelVersion (``model``) and responseId."""
    parts_of = _GeminiParts(names, include_thoughts)
    parts: List[Dict[str, Any]] = []
    for event in message_events(message):
        for part in parts_of.take(event):
            last = parts[-1] if parts else None
            if last is not None and "text" in part and "text" in last and part.get("thought") == last.get("thought"):
                last["text"] += part["text"]
            else:
                parts.append(part)
    candidate = {"content": {"role": "model", "parts": parts}, "finishReason": parts_of.finish_reason(), "index": 0}
    return {"candidates": [candidate], "usageMetadata": parts_of.usage_metadata(), "modelVersion": model,
            "responseId": parts_of.response_id}


def gemini_error_body(status: int, error_type: str, message: str, retry_after_s: Optional[int] = None,
                      quota_id: str = "") -> Dict[str, Any]:
    """agproxy's error (an Anthropic ``error_type``, answered with HTTP ``status``) as Gemini's
    error JSON: ``{"error": {"code": status, "message", "status": google.rpc name, "details"}}``.
    ``details`` says what Gemini CLI 0.61.0 reads from a 429 or 503 (``classifyGoogleError`` in
    its bundle's googleQuotaErrors.js; without details it retries with its own backoff, 5 s to
    30 s, ten times): a ``QuotaFailure`` whose violation's quotaId contains ``PerDay``
    (``quota_id``) is terminal, it stops at once; a ``RetryInfo`` (``retry_after_s``) is waited
    before the next try, and is terminal over 300 s (MAX_RETRYABLE_DELAY_SECONDS)."""
    name = _GEMINI_ERROR_STATUS.get(error_type)
    if name is None:
        name = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE", 529: "UNAVAILABLE"}.get(
                    status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    error: Dict[str, Any] = {"code": status, "message": message, "status": name}
    details: List[Dict[str, Any]] = []
    if quota_id:
        details.append({"@type": _GEMINI_QUOTA_FAILURE, "violations": [{"quotaId": quota_id, "description": message}]})
    if retry_after_s is not None:
        details.append({"@type": _GEMINI_RETRY_INFO, "retryDelay": f"{max(0, retry_after_s)}s"})
    if details:
        error["details"] = details
    return {"error": error}


def gemini_count_json(counted: Dict[str, Any]) -> Dict[str, Any]:
    """A token count (Anthropic's ``{"input_tokens": N}``, cache counts included where given) as
    Gemini's ``countTokens`` answer."""
    total = sum(upstream_count(counted.get(key)) or 0
                for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"))
    return {"totalTokens": total}


def gemini_models_list(models: Sequence[Any]) -> Dict[str, Any]:
    """Models (Anthropic model objects, or ids) as ``GET /v1beta/models`` answers: each named
    ``models/ID``, with the methods agproxy serves and its limits (a Claude model's window from
    :data:`CLAUDE_MODELS`; a Gemini model's Gemini's)."""
    windows = {model_id: window for model_id, _, window, _ in CLAUDE_MODELS}
    listed = []
    for model in models:
        model_id = str(model.get("id") if isinstance(model, dict) else model)
        shown = model.get("display_name") if isinstance(model, dict) else None
        gemini = model_id.startswith("gemini-")
        listed.append({"name": f"models/{model_id}", "version": "001", "displayName": str(shown or model_id),
                       "supportedGenerationMethods": list(_GEMINI_CLIENT_METHODS),
                       "inputTokenLimit": 1_048_576 if gemini else windows.get(model_id, _GEMINI_LISTED_WINDOW),
                       "outputTokenLimit": GEMINI_MAX_OUTPUT_TOKENS if gemini else _GEMINI_LISTED_OUTPUT})
    return {"models": listed}


# -- same-protocol passthrough: a client's own request to an upstream of its protocol -----------------

#: What a Chat client may not set on the shared account an ``openai`` upstream's key belongs to:
#: ``store`` keeps the conversation in the key owner's organisation (``metadata`` labels it there),
#: ``service_tier`` bills it at another price than the ledger's. Translation drops them too.
_CHAT_ACCOUNT_FIELDS = ("store", "metadata", "service_tier")


def chat_native_request(body: Dict[str, Any], model: str, stream: bool, options: OpenAIOptions,
                        max_tokens: Optional[int] = None) -> Tuple[Dict[str, Any], Dict[str, int]]:
    """A Chat Completions client's own request as an ``openai`` upstream gets it when it passes
    through untranslated: the model the route names, a stream's usage asked for (agproxy counts
    it; the client's own wish is kept by :class:`NativeChunks`), the length under the field the
    server takes (``max_tokens``, where given, in place of the client's). Everything else goes as
    the client wrote it (``seed``, ``logprobs``, a server's own fields such as vLLM's
    ``chat_template_kwargs``), but for what would spend or keep on the shared account what the
    operator did not choose (:data:`_CHAT_ACCOUNT_FIELDS`). The changes are counted, as the
    sanitizer's are."""
    out = dict(body, model=model)
    changes: Dict[str, int] = {}
    for field in _CHAT_ACCOUNT_FIELDS:
        if out.pop(field, None) is not None:
            _count(changes, f"dropped:{field}")
    if stream:
        out["stream"] = True
        if options.stream_usage:
            asked = out.get("stream_options")
            out["stream_options"] = dict(asked if isinstance(asked, dict) else {}, include_usage=True)
    other = "max_completion_tokens" if options.max_tokens_field == "max_tokens" else "max_tokens"
    if other in out:
        value = out.pop(other)
        if other == "max_completion_tokens" or options.max_tokens_field not in out:  # as _chat_max_tokens reads them
            out[options.max_tokens_field] = value
        _count(changes, f"renamed:{other}")
    if max_tokens is not None:
        out[options.max_tokens_field] = max_tokens
    return out, changes


def gemini_native_request(body: Dict[str, Any], trusted: Callable[[str], bool],
                          max_tokens: Optional[int] = None) -> Tuple[Dict[str, Any], Dict[str, int]]:
    """A Gemini client's own generateContent request as a ``gemini`` upstream gets it when it passes
    through untranslated: as the client wrote it (Google's own tools, safety settings and thought
    signatures included), but for the thought signatures ``trusted`` refuses (made by agproxy for
    another upstream's thinking, or by another Gemini model), which are dropped, and
    ``maxOutputTokens`` where given."""
    out = dict(body)
    changes: Dict[str, int] = {}
    contents = out.get("contents")
    if isinstance(contents, list):
        kept = []
        for content in contents:
            parts = content.get("parts") if isinstance(content, dict) else None
            if isinstance(parts, list) and any(isinstance(p, dict) and isinstance(p.get("thoughtSignature"), str)
                                               and not trusted(p["thoughtSignature"]) for p in parts):
                parts = [dict(p) for p in parts]
                for part in parts:
                    if isinstance(part, dict) and isinstance(part.get("thoughtSignature"), str) \
                            and not trusted(part["thoughtSignature"]):
                        del part["thoughtSignature"]
                        _count(changes, "foreign_thought_signature_dropped")
                content = dict(content, parts=parts)
            kept.append(content)
        out["contents"] = kept
    if max_tokens is not None:
        config = out.get("generationConfig")
        out["generationConfig"] = dict(config if isinstance(config, dict) else {}, maxOutputTokens=max_tokens)
    return out, changes


def is_packed_thinking(signature: str) -> bool:
    """Whether a thought signature is one agproxy made (:data:`_GEMINI_PACKED_THINKING`), which
    no Gemini server takes."""
    return _signature_bytes(signature[:28]).startswith(_GEMINI_PACKED_THINKING)  # 21 bytes: past the mark's 19


#: What a client of a protocol reads in an upstream's own chunk, and the type each must have: per
#: field, its types and, for an object, the spec of its fields, or for a list, the spec of each item
#: (an object). A chunk passes through as it came when all hold, nearly always; else the fields of
#: the wrong type are dropped (:func:`cleaned_chunk`), as a translation would drop them. Fields not
#: named here (``logprobs``' inside, Gemini's grounding) pass as they came: they are what passing
#: through is for.
_Spec = Dict[str, Tuple[Tuple[type, ...], Any]]
_COUNTS: _Spec = {}  # a usage object: every count a whole number (checked by _clean_counts)
_CHAT_CHUNK: _Spec = {
    "id": ((str,), None), "object": ((str,), None), "created": ((int,), None), "model": ((str,), None),
    "system_fingerprint": ((str, type(None)), None), "usage": ((dict, type(None)), _COUNTS),
    "choices": ((list,), {
        "index": ((int,), None), "finish_reason": ((str, type(None)), None), "logprobs": ((dict, type(None)), None),
        "delta": ((dict,), {
            "role": ((str,), None), "content": ((str, type(None)), None),
            "reasoning_content": ((str, type(None)), None), "reasoning": ((str, type(None)), None),
            "refusal": ((str, type(None)), None),
            "tool_calls": ((list, type(None)), {
                "index": ((int,), None), "id": ((str,), None), "type": ((str,), None),
                "function": ((dict,), {"name": ((str,), None), "arguments": ((str,), None)})})})})}
_GEMINI_CHUNK: _Spec = {
    "modelVersion": ((str,), None), "responseId": ((str,), None), "usageMetadata": ((dict,), _COUNTS),
    "promptFeedback": ((dict,), None),
    "candidates": ((list,), {
        "index": ((int,), None), "finishReason": ((str,), None),
        "content": ((dict,), {"role": ((str,), None), "parts": ((list,), {
            "text": ((str,), None), "thought": ((bool,), None), "thoughtSignature": ((str,), None),
            "functionCall": ((dict,), {"name": ((str,), None), "args": ((dict,), None), "id": ((str,), None)})})})})}


#: A whole Chat completion: its choices hold a ``message`` where a chunk's hold a ``delta``.
_CHAT_COMPLETION: _Spec = dict(_CHAT_CHUNK, choices=((list,), dict(
    {k: v for k, v in _CHAT_CHUNK["choices"][1].items() if k != "delta"}, message=_CHAT_CHUNK["choices"][1]["delta"])))


def native_answer(data: bytes, protocol: str, redactor: Redactor) -> bool:
    """Whether an upstream's whole JSON answer may go to a client of its protocol as it came: a
    well-formed answer (its fields of the types :func:`cleaned_chunk` checks) with no escaped
    surrogate and no configured key (whole, or split across its text parts). Else the client gets
    it translated, as from an upstream of another kind, where every key is hidden."""
    try:
        answer = loads_strict(data)
    except ValueError:
        return False
    if not isinstance(answer, dict) or b"\\ud" in data or b"\\uD" in data or redactor.data(data) is not data:
        return False
    spec = _CHAT_COMPLETION if protocol == "chat" else _GEMINI_CHUNK
    if _clean_fields(answer, spec) is not answer or (protocol == "chat" and
                                                     not isinstance(answer.get("choices"), list)):
        return False
    leaves: List[_TextLeaf] = []
    _text_leaves(answer, (), leaves)
    texts: Dict[Tuple[Any, ...], List[str]] = {}
    for path, owner, key in leaves:
        texts.setdefault(path, []).append(owner[key])
    return not any(redactor.spans("".join(pieces)) for pieces in texts.values())


def _clean_counts(usage: Dict[str, Any]) -> Dict[str, Any]:
    """A usage object whose counts (``prompt_tokens``, ``promptTokenCount``, ...) are all whole and
    not negative (the objects in it checked the same way; the rest, such as Gemini's per-modality
    details and service tier, kept as they came)."""
    kept = {}
    for key, value in usage.items():
        if isinstance(value, dict):
            value = _clean_counts(value)
        elif key.endswith(("tokens", "Count")) and not (_is_int(value) and 0 <= value <= MAX_UPSTREAM_TOKENS):
            continue
        kept[key] = value
    return usage if kept == usage else kept


def _clean_fields(value: Dict[str, Any], spec: _Spec) -> Dict[str, Any]:
    """``value`` itself where every field ``spec`` names has its type, else a copy without those
    that do not (a list's items that are not objects are dropped too)."""
    out: Optional[Dict[str, Any]] = None
    for key, (types, inner) in spec.items():
        if key not in value:
            continue
        item = value[key]
        if not isinstance(item, types) or (isinstance(item, bool) and bool not in types):
            kept: Any = _DROP
        elif inner is _COUNTS and isinstance(item, dict):
            kept = _clean_counts(item)
        elif inner and isinstance(item, dict):
            kept = _clean_fields(item, inner)
        elif inner and isinstance(item, list):
            kept = [_clean_fields(x, inner) for x in item if isinstance(x, dict)]
            kept = item if len(kept) == len(item) and all(a is b for a, b in zip(kept, item)) else kept
        else:
            kept = item
        if kept is not item:
            out = dict(value) if out is None else out
            if kept is _DROP:
                del out[key]
            else:
                out[key] = kept
    return value if out is None else out


_DROP = object()


def cleaned_chunk(chunk: Dict[str, Any], protocol: str) -> Optional[Dict[str, Any]]:
    """An upstream's own chunk as a client of its protocol may read it: itself when well-formed
    (nearly always), a copy without the fields of the wrong type, or None when nothing is left to
    say (a Chat chunk whose choices are no list and that has no usage; a Gemini chunk with
    nothing a client reads). Azure's first chunk (no choices, its prompt filter's results) goes."""
    if protocol == "chat":
        out = _clean_fields(chunk, _CHAT_CHUNK)
        if out.get("object") != "chat.completion.chunk":
            out = dict(out, object="chat.completion.chunk")
        if "choices" not in out:
            out = dict(out, choices=[])
        if not all("delta" in choice for choice in out["choices"]):
            out = dict(out, choices=[dict(choice, delta=choice.get("delta", {})) for choice in out["choices"]])
        return out if isinstance(chunk.get("choices"), list) or isinstance(out.get("usage"), dict) else None
    out = _clean_fields(chunk, _GEMINI_CHUNK)
    return out if any(key in out for key in ("candidates", "promptFeedback", "usageMetadata")) else None


class NativeChunks:
    """What of an upstream's own chunks a client of the same protocol gets (a same-protocol
    passthrough): each chunk's JSON as it came, but for the secrets in it (:class:`ChunkRedactor`),
    and the usage chunk of a client that did not ask for one (agproxy asks for it to count). An
    error chunk is not fed: the client gets agproxy's error ending, as on every route. Pure:
    :meth:`feed` each chunk, parsed and as it came; :meth:`end` at the stream's end."""

    def __init__(self, redactor: Redactor, protocol: str, usage_chunk: bool = True) -> None:
        self.redact = ChunkRedactor(redactor)
        self.protocol = protocol
        self.usage_chunk = usage_chunk
        #: a Chat stream's last chunk head, and whether a finish reason came (its end needs one)
        self.head: Dict[str, Any] = {}
        self.finished = False
        self.calls = False
        #: the choices (Chat) or candidates (Gemini), by index, whose finish reason has come
        self.ended: Set[int] = set()

    def feed(self, chunk: Dict[str, Any], data: str) -> List[bytes]:
        """What may go out once ``chunk`` (``data``, its JSON as it came) has come: the chunk as
        it came where it is well-formed (:func:`cleaned_chunk`) and holds no escaped surrogate (a
        lone one is no JSON a strict client reads; the parser mended it) nor line break (a chunk the
        upstream spread over several ``data:`` lines goes on one), else written anew."""
        cleaned = cleaned_chunk(chunk, self.protocol)
        if cleaned is not None:
            cleaned = self._unended(cleaned)
        if cleaned is None or (not self.usage_chunk and cleaned.get("choices") == [] and "usage" in cleaned):
            return []
        if self.protocol == "chat":
            self.head = {key: cleaned[key] for key in ("id", "created", "model") if key in cleaned}
            for choice in cleaned["choices"]:
                self.finished = self.finished or choice.get("finish_reason") is not None
                self.calls = self.calls or bool(choice["delta"].get("tool_calls"))
        if cleaned is not chunk or "\\ud" in data or "\\uD" in data or "\n" in data:
            return self.redact.feed(cleaned, _COMPACT_JSON.encode(cleaned).encode("utf-8", "replace"))
        return self.redact.feed(chunk, data.encode("utf-8"))

    def _unended(self, chunk: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """A cleaned chunk less its choices (candidates) whose finish reason came in an earlier
        chunk: what follows an answer's end is no part of it, as the translators take none of it
        (a hostile upstream's second answer was relayed after the first); None when nothing is
        left to say. The finish reasons it brings are noted."""
        key, reason = ("choices", "finish_reason") if self.protocol == "chat" else ("candidates", "finishReason")
        items = chunk.get(key)
        if not items:
            return chunk
        if self.ended:
            kept = [item for item in items if (item.get("index") or 0) not in self.ended]
            if len(kept) < len(items):
                items = kept
                chunk = dict(chunk, **{key: kept})
                if not kept and self.protocol != "chat":
                    del chunk[key]
                if not kept and not any(isinstance(chunk.get(name), dict)
                                        for name in ("usage", "usageMetadata", "promptFeedback")):
                    return None
        for item in items:
            if item.get(reason) is not None:
                self.ended.add(item.get("index") or 0)
        return chunk

    def end(self) -> List[bytes]:
        """What is still held, at the stream's end, and a Chat stream's finish reason where the
        upstream gave none (``[DONE]`` alone ends a whole answer, as the translated stream says)."""
        out = self.redact.end()
        if self.protocol == "chat" and not self.finished:
            self.finished = True
            closing = dict(self.head, object="chat.completion.chunk", choices=[
                {"index": 0, "delta": {}, "finish_reason": "tool_calls" if self.calls else "stop"}])
            out.append(_COMPACT_JSON.encode(closing).encode("utf-8", "replace"))
        return out


class NativeStreamEncoder(StreamEncoder):
    """Writes a passthrough stream: the upstream's own chunks (:data:`VERBATIM` events) in the
    client's framing (``chat``: SSE then ``data: [DONE]``; ``gemini``: SSE with ``alt=sse``, else one
    JSON array), the other events unwritten (they stand for the same chunks), and the dialect's own
    keep-alive and error ending, as its translating encoder writes them."""

    def __init__(self, protocol: str, sse: bool = True) -> None:
        self.protocol = protocol
        self.sse = sse or protocol == "chat"
        self.ended = False
        self._chunks = 0  # chunks written
        self._opened = False  # a JSON array's "[" is written

    def encode(self, events: List[Event]) -> bytes:
        out: List[bytes] = []
        for event in events:
            if self.ended:
                break
            if event.name == VERBATIM:
                out += [self._framed(chunk) for chunk in event.data["chunks"]]
            elif event.name == "error":
                error = event.data.get("error") if isinstance(event.data.get("error"), dict) else {}
                out.append(self.error(str(error.get("type") or "api_error"), str(error.get("message") or
                                                                                  "upstream error")))
            elif event.name == "message_stop":
                out.append(b"data: [DONE]\n\n" if self.protocol == "chat" else b"" if self.sse else
                           self._open() + b"]")
                self.ended = True
        return b"".join(out)

    def _framed(self, chunk: bytes) -> bytes:
        self._chunks += 1
        if self.sse:
            return b"data: " + chunk + b"\n\n"
        return self._open() + (b"," if self._chunks > 1 else b"") + b"\r\n" + chunk

    def _open(self) -> bytes:
        if self.sse or self._opened:
            return b""
        self._opened = True
        return b"["

    def ping(self) -> bytes:
        if self.ended:
            return b""
        return b": ping\n\n" if self.protocol == "chat" else self._open() + b"\n"

    def error(self, error_type: str, message: str) -> bytes:
        if self.ended:
            return b""
        self.ended = True
        status = _ERROR_STATUS.get(error_type, 500)
        if self.protocol == "chat":
            return f"data: {_COMPACT_JSON.encode(chat_error_body(status, error_type, message))}\n\n".encode(
                "utf-8", "replace")
        body = _COMPACT_JSON.encode(gemini_error_body(status, error_type, message)).encode("utf-8", "replace")
        if self.sse:
            return body + b"\n"
        return self._open() + (b"," if self._chunks else b"") + body + b"]"


# =====================================================================================
# 8. Routing, accounts and the retry engine
#    Which upstream and which account serve a request; rate-limit resets and the retry policy
#    (decide), the account pool, and run_attempts, which awaits only what it is given (the
#    attempt and a sleep); what upstreams rejected (LearnedRejections). The server holds the state.
# =====================================================================================


@dataclasses.dataclass(frozen=True)
class Route:
    """Where a request goes: the upstreams to try in order and the model name they are sent."""

    upstreams: Tuple[Upstream, ...]
    model: str

    @property
    def upstream(self) -> Upstream:
        return self.upstreams[0]


def route_model(config: Config, model: str) -> Route:
    """The first ``model_map`` rule whose glob fits ``model`` wins; with no map, the first upstream."""
    if not config.model_map:
        return Route((config.upstreams[0],), model)
    for rule in config.model_map:
        if fnmatch.fnmatchcase(model, rule.match):
            return Route(tuple(config.upstream(name) for name in rule.upstreams), rule.model or model)
    raise NotFound(f"model: no model_map rule matches {model!r}; add a rule for it (or a \"*\" rule)")


# -- rate-limit resets and retry decisions (pure: the caller passes the time in) ---------------

#: A 429 whose reset is at most this far away is waited out on the same account.
SHORT_LIMIT_WAIT_S = 2.0
#: Rest after a 429 that names no reset; doubles with each limit in a row, up to the maximum.
DEFAULT_COOLDOWN_S = 30.0
#: The longest any account rests, whatever an upstream says (``retry-after: 1e12`` must not retire
#: an account for ever); a longer limit is met again by the trial request after this rest.
MAX_COOLDOWN_S = 3600.0
#: Rest for an account whose key the upstream rejected (401/403) before it is tried again.
REJECTED_KEY_COOLDOWN_S = 600.0
#: Rest of an account for one model that the upstream refused to its key (a key's models change
#: by hand, seldom): its other models are served meanwhile.
MODEL_REFUSED_COOLDOWN_S = 600.0
#: Rest for an account out of credit (402, or the upstream's words for it). Longer than a rejected
#: key's: credit comes back only when someone pays, not by itself, and each trial is a refused
#: request; half an hour, so that a top-up is used within that time without a restart.
OUT_OF_CREDIT_COOLDOWN_S = 1800.0
#: The longest any rest lasts, whatever the state file or the wall clock says.
_LONGEST_REST_S = max(MAX_COOLDOWN_S, REJECTED_KEY_COOLDOWN_S, MODEL_REFUSED_COOLDOWN_S, OUT_OF_CREDIT_COOLDOWN_S)
#: How the reason of an account resting out of credit begins (the accounts page shows it).
_OUT_OF_CREDIT_REASON = "out of credit"
#: Pause before the next attempt after an overloaded answer (529/503), jittered 0.5x to 1.5x.
OVERLOADED_BACKOFF_S = 1.0
_DURATION_PART = _LazyPattern(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def _parse_duration(text: str) -> Optional[float]:
    """``1.5``, ``20ms``, ``6m0s``, ``1h2m3.5s`` or ``34s`` as seconds."""
    text = text.strip()
    try:
        value = float(text)
        return None if math.isnan(value) else max(0.0, value)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def _parse_instant(text: str, now: float) -> Optional[float]:
    """An RFC 3339 timestamp or HTTP date as seconds from ``now``."""
    text = text.strip()
    try:
        moment = datetime.datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00")))
    except ValueError:
        try:
            import email.utils  # only a Retry-After given as a date needs it (it costs ~1 MB)

            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    try:
        return max(0.0, moment.timestamp() - now)
    except (OverflowError, OSError, ValueError):
        return None


def rate_limit_reset(headers: Headers, body: bytes, now: float) -> Optional[float]:
    """Seconds until an upstream says its limit resets: ``retry-after``, Anthropic's
    ``anthropic-ratelimit-*-reset`` (the exhausted limit's), OpenAI's ``x-ratelimit-reset-*``, or a
    Gemini ``RetryInfo`` in the body. None when it does not say (or says ``nan``); never more than
    :data:`MAX_COOLDOWN_S`, however far off or infinite the upstream's answer."""
    seconds = _reset_in_headers(headers, now)
    if seconds is None:
        match = re.search(rb'"retryDelay"\s*:\s*"([^"]{1,100})"', body or b"")
        seconds = _parse_duration(match.group(1).decode("ascii", "replace")) if match else None
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_COOLDOWN_S)


def _reset_in_headers(headers: Headers, now: float) -> Optional[float]:
    retry_after = header_value(headers, "retry-after")
    if retry_after:
        seconds = _parse_duration(retry_after)
        return seconds if seconds is not None else _parse_instant(retry_after, now)
    exhausted, any_reset = [], []
    for name, value in headers:
        lower = name.lower()
        if lower.startswith("anthropic-ratelimit-") and lower.endswith("-reset"):
            seconds = _parse_instant(value, now)
            remaining = header_value(headers, lower[: -len("-reset")] + "-remaining")
        elif lower.startswith("x-ratelimit-reset-"):
            seconds = _parse_duration(value)
            remaining = header_value(headers, "x-ratelimit-remaining-" + lower[len("x-ratelimit-reset-"):])
        else:
            continue
        if seconds is None:
            continue
        any_reset.append(seconds)
        if remaining is not None and remaining.strip() == "0":
            exhausted.append(seconds)
    if exhausted:
        return max(exhausted)
    if any_reset:
        return min(any_reset)
    return None


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one upstream attempt came to, as the retry engine sees it."""

    status: int  # the upstream's HTTP status; 0 when no answer came (connect, timeout, dropped)
    failure: str = ""  # for status 0: what happened; for a rejected key: the upstream's words
    reset_s: Optional[float] = None  # for 429: when the upstream says the limit resets
    committed: bool = False  # bytes of this answer already reached the client
    said: int = 0  # the status the upstream sent, where it differs from ``status`` (what it means)
    model_refused: bool = False  # a 401/403 that refuses the model, not the key (:func:`refuses_model`)


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to do after an attempt: try again (which account, after what pause) and what the
    attempt means for its account's health."""

    retry: bool
    same_account: bool = False
    wait_s: float = 0.0
    cooldown_s: float = 0.0
    rejected_key: bool = False
    model_refused: bool = False
    reason: str = ""


#: What an attempt's outcome is called in the metrics and the record: a handful of values, whatever the upstream said.
ATTEMPT_OUTCOMES = ("ok", "rate_limited", "rejected_key", "model_refused", "out_of_credit", "timeout",
                    "server_error", "client_error", "no_answer", "aborted")


def attempt_outcome(status: int, decision: Decision) -> str:
    """The :data:`ATTEMPT_OUTCOMES` name of an attempt that got ``status`` (0: no answer) and ``decision``."""
    if decision.reason in ("ok", "aborted"):
        return decision.reason
    if decision.rejected_key:
        return "out_of_credit" if decision.reason.startswith(_OUT_OF_CREDIT_REASON) else "rejected_key"
    if decision.model_refused:
        return "model_refused"
    if status == 429:
        return "rate_limited"
    if status in (408, 504):
        return "timeout"
    if status == 0:
        return "no_answer"
    return "server_error" if status >= 500 else "client_error"


def decide(outcome: Outcome, attempt: int, max_attempts: int, limits_in_a_row: int = 0,
           jitter: float = 0.5) -> Decision:
    """The retry policy. ``attempt`` counts from 1; ``jitter`` is a random number in [0, 1)."""
    more = attempt < max_attempts and not outcome.committed
    status = outcome.status
    if 0 < status < 400:
        return Decision(False, reason="ok")
    if status == 429:
        reset = outcome.reset_s
        if reset is not None and reset <= SHORT_LIMIT_WAIT_S:
            return Decision(more, same_account=True, wait_s=reset, reason=f"rate limited for {reset:.1f} s")
        doubled = DEFAULT_COOLDOWN_S * 2 ** min(max(0, limits_in_a_row), 20)  # capped: 2 ** 1024 overflows
        cooldown = min(MAX_COOLDOWN_S, reset if reset is not None else doubled)
        return Decision(more, cooldown_s=cooldown, reason="rate limited")
    if status in (529, 503):
        return Decision(more, wait_s=OVERLOADED_BACKOFF_S * (0.5 + jitter), reason="overloaded")
    if status == 402:  # out of credit: rests for every model, as a rejected key does
        return Decision(more, cooldown_s=OUT_OF_CREDIT_COOLDOWN_S, rejected_key=True,
                        reason=f"{_OUT_OF_CREDIT_REASON} ({outcome.failure[:170] if outcome.failure else 'HTTP 402'})")
    if status in (401, 403):
        words = outcome.failure[:170] if outcome.failure else f"HTTP {status}"
        if outcome.model_refused:
            return Decision(more, cooldown_s=MODEL_REFUSED_COOLDOWN_S, model_refused=True,
                            reason=f"model refused ({words})")
        return Decision(more, cooldown_s=REJECTED_KEY_COOLDOWN_S, rejected_key=True, reason=f"key rejected ({words})")
    if status in (500, 502, 504) or status == 0:
        return Decision(more, reason=outcome.failure or f"HTTP {status}")
    return Decision(False, reason=f"HTTP {status} is not retried" + (f": {outcome.failure}" if outcome.failure else ""))


def _outcome_of(error: AgproxyError) -> Outcome:
    """How the retry engine sees a failed attempt."""
    if isinstance(error, UpstreamFailure) and not error.upstream_status:
        return Outcome(0, failure=error.message)
    return Outcome(error.upstream_status or error.status, failure=error.upstream_words, reset_s=error.reset_s,
                   said=error.upstream_said, model_refused=isinstance(error, ModelRefused))


# -- the account pool ------------------------------------------------------------------------

#: How long a request waits for a concurrency slot when every account is busy.
MAX_SLOT_WAIT_S = 30.0
#: How often a request waiting for a max_concurrency slot looks again.
_SLOT_POLL_S = 0.05
#: Sessions remembered for sticky account choice (least recently used forgotten first).
MAX_STICKY_SESSIONS = 10000


#: Models one account keeps separate rate-limit rests for (the soonest to end forgotten first).
MAX_MODEL_RESTS = 64


@dataclasses.dataclass(eq=False)
class AccountState:
    """The health and counters of one account. Times are wall-clock seconds (they are saved).

    A rate limit rests the account for the model that hit it only (Anthropic, OpenAI and Gemini
    count their limits per model); a rejected key rests it for every model (the key ``""``), and a
    model the upstream refuses to the key rests it for that model (``refused`` says why). When a
    rest ends, the next attempt for its model is a trial, and other requests for that model
    wait for its verdict; the account's other models are served as before."""

    rests: Dict[str, float] = dataclasses.field(default_factory=dict)
    rejected_key: bool = False
    reason: str = ""
    limits_in_a_row: int = 0
    #: models (``""``: every model) that rested and have not answered since
    unproven: Set[str] = dataclasses.field(default_factory=set)
    #: those of them whose trial attempt is out now
    trials: Set[str] = dataclasses.field(default_factory=set)
    #: models it rests for because the upstream refused them to its key, with the upstream's words
    refused: Dict[str, str] = dataclasses.field(default_factory=dict)
    in_flight: int = 0
    last_limited: float = 0.0
    requests: int = 0
    successes: int = 0
    failures: int = 0
    rate_limited: int = 0

    @property
    def resting_until(self) -> float:
        """When the last of its rests ends (0: none)."""
        return max(self.rests.values(), default=0.0)

    def rest_for(self, model: str, now: float) -> float:
        """When it may serve ``model`` again: never more than the longest rest from ``now`` (a
        wall clock that stepped back does not stretch a rest)."""
        return min(max(self.rests.get("", 0.0), self.rests.get(model, 0.0)), now + _LONGEST_REST_S)

    def key_rejected(self, now: float) -> bool:
        """Whether it rests now because its key was rejected (not only for a model's limit)."""
        return self.rejected_key and self.rests.get("", 0.0) > now

    def refuses(self, model: str, now: float) -> bool:
        """Whether it rests for ``model`` now because the upstream refused that model to its key."""
        return model in self.refused and self.rests.get(model, 0.0) > now

    def rest(self, model: str, until: float, now: float) -> None:
        """Rest for ``model`` (``""``: every model) until then; ended rests are dropped, and past
        :data:`MAX_MODEL_RESTS` the soonest to end (never the one just made)."""
        self.rests = {m: t for m, t in self.rests.items() if t > now}
        self.rests[model] = until
        while len(self.rests) > MAX_MODEL_RESTS:
            del self.rests[min((m for m in self.rests if m and m != model), key=self.rests.__getitem__)]
        self.refused = {m: words for m, words in self.refused.items() if m in self.rests}


def _reason_words(reason: str, label: str) -> str:
    """The upstream's words in a rest's reason (``label (words)``, as :func:`decide` writes it), to
    quote in a sentence: without the label, the brackets and a closing full stop."""
    words = reason[len(label):] if reason.startswith(label) else reason
    return words.strip(" ()").rstrip(". ")


def server_fingerprint(upstream: Upstream) -> str:
    """A short mark of the server an upstream names: what learned rejections are bound to."""
    return hashlib.sha256(f"agproxy\0{upstream.kind}\0{upstream.base_url}".encode(
        "utf-8", "surrogatepass")).hexdigest()[:16]


def key_fingerprint(upstream: Upstream, account: Account) -> str:
    """A short one-way mark of an account's key and the server it is for: what a saved rest is
    bound to, so that a key changed in the config, or a new base_url, starts afresh (the key
    itself is never written anywhere)."""
    return hashlib.sha256(f"agproxy\0{upstream.kind}\0{upstream.base_url}\0{account.api_key}".encode(
        "utf-8", "surrogatepass")).hexdigest()[:16]


class AccountPool:
    """Every upstream's accounts with their health; chooses the account for each attempt.

    Sticky per session (so the upstream's prompt cache stays warm), else the least loaded, least
    recently limited healthy account. A resting account whose time is up gets one trial request
    (half-open) before it takes load again.
    """

    def __init__(self, upstreams: Sequence[Upstream]) -> None:
        self.upstreams = {u.name: u for u in upstreams}
        self.states: Dict[Tuple[str, str], AccountState] = {
            (u.name, a.name): AccountState() for u in upstreams for a in u.accounts}
        self._sessions: collections.OrderedDict = collections.OrderedDict()
        self._turn: Dict[str, int] = {}
        #: what a rest's reason (an upstream's words) passes through before it is shown or saved:
        #: the redactor's text, which hides key-shaped strings too (a key an upstream cut short)
        self.hide: Callable[[str], str] = str

    def state(self, upstream: Upstream, account: Account) -> AccountState:
        return self.states[(upstream.name, account.name)]

    def _usable(self, upstream: Upstream, account: Account, model: str, now: float) -> bool:
        state = self.state(upstream, account)
        if not account.serves(model) or state.rest_for(model, now) > now:
            return False
        if state.trials & {"", model}:
            return False  # a trial of this model (or of the key) is out; wait for its verdict
        return not account.max_concurrency or state.in_flight < account.max_concurrency

    def choose(self, route: Route, session: Optional[str], now: float, tried: Iterable[Tuple[str, str]] = (),
               prefer: Optional[Tuple[str, str]] = None) -> Optional[Tuple[Upstream, Account]]:
        """The account for the next attempt, or None when no account can take it now."""
        tried = set(tried)
        sticky = self._sessions.get(session) if session else None
        for wanted in (prefer, sticky):
            if wanted and wanted not in tried - {prefer}:
                upstream = self.upstreams.get(wanted[0])
                if upstream in route.upstreams:
                    account = next((a for a in upstream.accounts if a.name == wanted[1]), None)
                    if account and self._usable(upstream, account, route.model, now):
                        return upstream, account
        for fresh_only in (True, False):
            for upstream in route.upstreams:
                usable = [a for a in upstream.accounts if self._usable(upstream, a, route.model, now)
                          and (not fresh_only or (upstream.name, a.name) not in tried)]
                if usable:
                    return upstream, self._least_loaded(upstream, usable)
        return None

    def _least_loaded(self, upstream: Upstream, accounts: List[Account]) -> Account:
        turn = self._turn.get(upstream.name, 0)
        self._turn[upstream.name] = turn + 1
        if len(accounts) == 1:
            return accounts[0]  # (the turn still moves on: the rotation is the same as it was)
        order = {a.name: (i - turn) % len(upstream.accounts) for i, a in enumerate(upstream.accounts)}

        def load(account: Account) -> Tuple[float, float, int]:
            state = self.state(upstream, account)
            return state.in_flight / account.weight, state.last_limited, order[account.name]

        return min(accounts, key=load)

    def hold(self, upstream: Upstream, account: Account) -> Callable[[], None]:
        """Keep a concurrency slot beyond the attempt (a stream still being relayed); returns its release."""
        state = self.state(upstream, account)
        state.in_flight += 1
        released = []

        def release() -> None:
            if not released:
                released.append(True)
                state.in_flight = max(0, state.in_flight - 1)

        return release

    def begin(self, upstream: Upstream, account: Account, model: str = "") -> Optional[str]:
        """An attempt for ``model`` on this account starts. Returns what it is the trial of (the
        model, or ``""`` for the key) when its account rested for that and has not answered since;
        pass it to :meth:`finish`."""
        state = self.state(upstream, account)
        state.in_flight += 1
        state.requests += 1
        trial = "" if "" in state.unproven else model if model in state.unproven else None
        if trial is not None:
            state.trials.add(trial)
        return trial

    def finish(self, upstream: Upstream, account: Account, decision: Decision, now: float,
               session: Optional[str], model: str = "", trial: Optional[str] = None) -> bool:
        """Record an attempt's result for ``model`` (``trial``: what :meth:`begin` said it was the
        trial of); True when the account's resting state changed (save it)."""
        state = self.state(upstream, account)
        state.in_flight = max(0, state.in_flight - 1)
        was = (dict(state.rests), state.rejected_key, state.reason)
        if trial is not None:
            state.trials.discard(trial)
        if decision.reason == "ok":
            state.successes += 1
            state.rests = {m: t for m, t in state.rests.items() if t > now and m not in ("", model)}
            state.refused = {m: words for m, words in state.refused.items() if m in state.rests}
            state.unproven -= {"", model}
            if state.rejected_key or not state.unproven:
                state.reason = ""
            state.rejected_key, state.limits_in_a_row = False, 0
            if session:
                self._sessions[session] = (upstream.name, account.name)
                self._sessions.move_to_end(session)
                while len(self._sessions) > MAX_STICKY_SESSIONS:
                    self._sessions.popitem(last=False)
        else:
            state.failures += 1
            if decision.cooldown_s:
                state.rest("" if decision.rejected_key else model, now + decision.cooldown_s, now)
                state.unproven.add("" if decision.rejected_key else model)
                if len(state.unproven) > MAX_MODEL_RESTS:  # those whose rest was forgotten go untried
                    state.unproven &= set(state.rests) | {""}
                state.rejected_key = decision.rejected_key
                state.reason = decision.reason
                if decision.model_refused:
                    state.refused[model] = decision.reason
                elif not decision.rejected_key:
                    state.refused.pop(model, None)
                    state.limits_in_a_row += 1
                    state.last_limited = now
                    state.rate_limited += 1
        return was != (state.rests, state.rejected_key, state.reason)

    def rested(self, upstream: Upstream, model: str, now: float) -> Account:
        """An account of ``upstream`` not resting for ``model`` (the first if all are), for a side
        call outside the pool's attempts: a token count, the model list."""
        return next((a for a in upstream.accounts if self.state(upstream, a).rest_for(model, now) <= now),
                    upstream.accounts[0])

    def busy_only(self, route: Route, now: float) -> bool:
        """True when accounts exist that only lack a free concurrency slot."""
        return any(account.serves(route.model) and self.state(u, account).rest_for(route.model, now) <= now
                   for u in route.upstreams for account in u.accounts)

    def unavailable(self, route: Route, now: float) -> AgproxyError:
        """The error for a request no account can take: 529 when accounts are only busy (no free
        concurrency slot), 429 with the soonest reset while accounts are rate limited, 502 naming the
        upstream when every key was rejected."""
        resting = [(u, a, self.state(u, a)) for u in route.upstreams for a in u.accounts if a.serves(route.model)]
        if not resting:
            names = ", ".join(repr(u.name) for u in route.upstreams)
            return NotFound(f"no account of upstream {names} serves model {route.model!r} (see accounts[].models)")
        busy = [s for _, _, s in resting if s.rest_for(route.model, now) <= now]
        if busy:  # not resting, yet no slot came free (max_concurrency) while the request waited
            names = ", ".join(repr(u.name) for u in route.upstreams)
            return AgproxyError(
                f"all {len(busy)} available account(s) of upstream {names} that serve {route.model!r} are busy "
                f"(every max_concurrency slot stayed taken for {MAX_SLOT_WAIT_S:.0f} s); retry shortly",
                status=529, error_type="overloaded_error", headers=[("retry-after", "5")])
        refusing = [(u, a, s) for u, a, s in resting if s.refuses(route.model, now)]
        limited = [s for _, _, s in resting if not s.key_rejected(now) and not s.refuses(route.model, now)
                   and s.rest_for(route.model, now) > now]
        if limited:
            soonest = min(s.rest_for(route.model, now) for s in limited)
            wait = max(1, math.ceil(soonest - now))
            at = datetime.datetime.fromtimestamp(soonest, datetime.timezone.utc).strftime("%H:%M:%S UTC")
            names = ", ".join(repr(u.name) for u in route.upstreams)
            rejected = len(resting) - len(limited)
            return AgproxyError(
                f"all {len(limited)} account(s) of upstream {names} that serve {route.model!r} are rate limited; "
                f"the first is free again in {wait} s (at {at})" +
                (f"; {rejected} more rest with a rejected key" if rejected else ""),
                status=429, error_type="rate_limit_error", headers=[("retry-after", str(wait))])
        if refusing:
            return self._refused(route, refusing, len(resting) - len(refusing), now)
        if all(s.reason.startswith(_OUT_OF_CREDIT_REASON) for _, _, s in resting):
            return self._out_of_credit(route, resting, now)
        parts = []
        for upstream in route.upstreams:
            keys = [f"{a.name} ({_reason_words(s.reason, 'key rejected')}, "
                    f"will be tried again in {max(1, math.ceil(s.rest_for(route.model, now) - now))} s)"
                    for u, a, s in resting if u is upstream and s.key_rejected(now)]
            if keys:
                parts.append(f"upstream {upstream.name!r} rejected the key of {', '.join(keys)}")
        return KeyRejected("; ".join(parts) + ". Check their api_key in the agproxy config, or run `agproxy check`; "
                           "once it is fixed, `agproxy state clear` (agproxy stopped) or a restart with the new key "
                           "ends the rest at once")

    @staticmethod
    def _refused(route: Route, refusing: List[Tuple[Upstream, Account, AccountState]], rejected: int,
                 now: float) -> ModelRefused:
        """The 400 for a model that no account may use: the upstreams refused it to every key that
        is not rejected outright."""
        names = ", ".join(repr(u.name) for u in route.upstreams)
        soonest = min(s.rests[route.model] for _, _, s in refusing)
        said = "; ".join(f"{u.name}/{a.name}: {_reason_words(s.refused[route.model], 'model refused')}"
                         for u, a, s in refusing[:3])
        return ModelRefused(
            f"no account of upstream {names} may use model {route.model!r} ({said})" +
            (f"; {rejected} more rest with a rejected key" if rejected else "") +
            f". Ask for another model, or route {route.model!r} to an upstream whose key may use it (model_map); "
            f"the accounts will be tried with it again in {max(1, math.ceil(soonest - now))} s")

    @staticmethod
    def _out_of_credit(route: Route, resting: List[Tuple[Upstream, Account, AccountState]], now: float) -> AgproxyError:
        """The error when every account that serves the model is out of credit: a 402
        ``billing_error`` naming the upstream and each account (Claude Code shows it as it is)."""
        accounts = ", ".join(f"{u.name!r} account {a.name!r} ({_reason_words(s.reason, _OUT_OF_CREDIT_REASON)}, "
                             f"will be tried again in {max(1, math.ceil(s.rest_for(route.model, now) - now))} s)"
                             for u, a, s in resting)
        broke = AgproxyError(f"every account that serves {route.model!r} is out of credit: {accounts}. Add credit "
                             "there, or map the model to another upstream in model_map; once there is, `agproxy "
                             "state clear` (with agproxy stopped) ends the rests at once", status=402,
                             error_type="billing_error")
        broke.final = True
        return broke

    def reconfigured(self, upstreams: Sequence[Upstream]) -> AccountPool:
        """A pool for a reloaded config's upstreams that keeps what this one knows of each account
        whose key and server did not change (its rests, counters and requests in flight: the very
        same state, so a request begun before the reload releases its slot where it counts), the
        sessions' accounts, and the rotation; any other account starts afresh."""
        pool = AccountPool(upstreams)
        for upstream in upstreams:
            old = self.upstreams.get(upstream.name)
            for account in upstream.accounts:
                before = next((a for a in old.accounts if a.name == account.name), None) if old else None
                if before is not None and key_fingerprint(old, before) == key_fingerprint(upstream, account):
                    pool.states[(upstream.name, account.name)] = self.states[(old.name, before.name)]
        pool._sessions = self._sessions
        pool._turn = self._turn
        pool.hide = self.hide
        return pool

    def _fingerprint(self, upstream_name: str, account_name: str) -> str:
        upstream = self.upstreams[upstream_name]
        account = next(a for a in upstream.accounts if a.name == account_name)
        return key_fingerprint(upstream, account)

    def to_json(self, now: float) -> Dict[str, Any]:
        """The resting accounts, for the state file, each bound to its key (by fingerprint)."""
        return {f"{u}/{a}": {"resting_until": s.rests.get("", 0.0), "rejected_key": s.rejected_key,
                             "reason": self.hide(s.reason),
                             "models": {m: t for m, t in sorted(s.rests.items()) if m and t > now},
                             "refused": {m: s.refused[m] for m in sorted(s.refused) if s.refuses(m, now)},
                             "limits_in_a_row": s.limits_in_a_row, "key": self._fingerprint(u, a)}
                for (u, a), s in sorted(self.states.items()) if s.resting_until > now}

    def load_json(self, data: Any, now: float) -> List[str]:
        """Take resting accounts from a saved state: only a rest of the same key at the same
        server (a key fixed in the config starts afresh); unknown accounts and past times are
        skipped. Returns a line for each rest taken, for the log."""
        restored: List[str] = []
        if not isinstance(data, dict):
            return restored
        for (upstream, account), state in self.states.items():  # names may hold a "/": look each one up
            entry = data.get(f"{upstream}/{account}")
            if not isinstance(entry, dict) or entry.get("key") != self._fingerprint(upstream, account):
                continue
            models = entry.get("models") if isinstance(entry.get("models"), dict) else {}
            for model, until in [("", entry.get("resting_until"))] + list(models.items())[:MAX_MODEL_RESTS]:
                if isinstance(model, str) and len(model) <= 200 and isinstance(until, (int, float)) \
                        and not isinstance(until, bool) and math.isfinite(until) and until > now:
                    state.rest(model, min(float(until), now + _LONGEST_REST_S), now)
            refused = entry.get("refused") if isinstance(entry.get("refused"), dict) else {}
            state.refused = {m: words[:200] for m, words in refused.items() if m in state.rests and m
                             and isinstance(words, str)}
            if state.rests:
                state.unproven = set(state.rests)
                state.rejected_key = entry.get("rejected_key") is True
                reason = entry.get("reason")
                state.reason = reason[:200] if isinstance(reason, str) and reason else "rested before a restart"
                limits = entry.get("limits_in_a_row")
                state.limits_in_a_row = min(limits, 64) if isinstance(limits, int) and limits > 0 else 0
                which = "" if state.rests.get("", 0.0) > now else f" for {', '.join(sorted(state.rests))}"
                restored.append(f"account {account!r} of upstream {upstream!r} rests {state.resting_until - now:.0f} s "
                                f"more{which} ({state.reason})")
        return restored

    def describe(self, now: float) -> List[Dict[str, Any]]:
        """Every account with its state and counters (never its key), for /v1/agproxy/accounts."""
        out = []
        for upstream in self.upstreams.values():
            for account in upstream.accounts:
                s = self.state(upstream, account)
                if s.resting_until > now and s.key_rejected(now) and s.reason.startswith(_OUT_OF_CREDIT_REASON):
                    status = "out_of_credit"
                elif s.resting_until > now:
                    status = "rejected_key" if s.key_rejected(now) else "rate_limited"
                elif s.unproven:
                    status = "probing" if s.trials else "recovering"
                else:
                    status = "ok"
                out.append({
                    "upstream": upstream.name, "account": account.name, "state": status, "reason": self.hide(s.reason),
                    "resting_until": _iso_time(s.resting_until) if s.resting_until > now else None,
                    "models_resting": {m: _iso_time(t) for m, t in sorted(s.rests.items()) if m and t > now},
                    "in_flight": s.in_flight, "requests": s.requests, "successes": s.successes,
                    "failures": s.failures, "rate_limited": s.rate_limited,
                })
        return out


def _iso_time(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.timezone.utc).isoformat(timespec="seconds")


class AttemptError(Exception):
    """One failed attempt: the error to answer with if it is the last, and what the retry engine
    needs to know about it."""

    def __init__(self, error: AgproxyError, outcome: Outcome) -> None:
        super().__init__(error.message)
        self.error = error
        self.outcome = outcome



async def run_attempts(pool: AccountPool, route: Route, session: Optional[str], max_attempts: int,
                       attempt: Callable[[Upstream, Account], Any], *,
                       clock: Callable[[], float] = time.time,
                       sleep: Callable[[float], Any] = asyncio.sleep,
                       jitter: Callable[[], float] = random.random,
                       on_attempt: Optional[Callable[[int, Upstream, Account, Decision, float], None]] = None,
                       on_change: Optional[Callable[[], None]] = None) -> Any:
    """Try accounts until one answers or the attempts run out, following :func:`decide`.

    ``attempt`` returns the answer or raises :class:`AttemptError`. No I/O here beyond what
    ``attempt`` and ``sleep`` do. ``clock`` and ``sleep`` measure rests and wait out resets (a
    test passes its own); a wait for a free max_concurrency slot is real time, since other
    requests free it.
    """
    tried: List[Tuple[str, str]] = []
    prefer: Optional[Tuple[str, str]] = None
    last: Optional[AttemptError] = None
    waited = 0.0
    number = 0
    while number < max_attempts:
        choice = pool.choose(route, session, clock(), tried, prefer)
        if choice is None:
            if pool.busy_only(route, clock()) and waited < MAX_SLOT_WAIT_S:
                await asyncio.sleep(_SLOT_POLL_S)  # other requests free slots in real time, whatever the clock
                waited += _SLOT_POLL_S
                continue
            raise pool.unavailable(route, clock())
        number += 1
        upstream, account = choice
        trial = pool.begin(upstream, account, route.model)
        try:
            result = await attempt(upstream, account)
        except AttemptError as failed:
            state = pool.state(upstream, account)
            decision = decide(failed.outcome, number, max_attempts, state.limits_in_a_row, jitter())
            if pool.finish(upstream, account, decision, clock(), session, route.model, trial) and on_change:
                on_change()
            if on_attempt:
                on_attempt(number, upstream, account, decision, failed.outcome.said or failed.outcome.status)
            if not decision.retry:
                raise failed.error from None
            last = failed
            tried.append((upstream.name, account.name))
            prefer = (upstream.name, account.name) if decision.same_account else None
            if decision.wait_s:
                await sleep(decision.wait_s)
            continue
        except BaseException:
            pool.finish(upstream, account, Decision(False, reason="aborted"), clock(), None, route.model, trial)
            raise
        changed = pool.finish(upstream, account, Decision(False, reason="ok"), clock(), session, route.model, trial)
        if changed and on_change:
            on_change()
        if on_attempt:
            on_attempt(number, upstream, account, Decision(False, reason="ok"), 200)
        return result
    assert last is not None
    raise last.error


def upstream_url(base_url: str, path: str) -> str:
    """``base_url`` is what a client would use as its base URL; API paths are appended to it."""
    return base_url.rstrip("/") + path


#: Fields (and, apart, betas) learned per upstream; real upstreams reject a handful.
MAX_LEARNED = 64
#: Field names agproxy knows in what it sends: the Anthropic Messages request's (top level, tools,
#: content blocks) and what its translators write for Chat Completions and Gemini. A lesson about
#: one of these is never pushed out of the learned table by a lesson about a name a client made up.
KNOWN_REQUEST_FIELDS = BASIC_FIELDS | BASIC_TOOL_FIELDS | frozenset((
    # Anthropic Messages: top level, tools, blocks, thinking
    "service_tier", "container", "mcp_servers", "context_management", "output_config", "output_format",
    "inference_geo", "cache_control", "citations", "input_examples", "defer_loading", "strict",
    "eager_input_streaming", "allowed_callers", "display", "budget_tokens", "disable_parallel_tool_use", "user_id",
    "is_error", "title", "context", "effort",
    # Chat Completions
    "max_completion_tokens", "stream_options", "include_usage", "parallel_tool_calls", "reasoning_effort",
    "reasoning_content", "tool_calls", "tool_call_id", "response_format", "chat_template_kwargs", "user", "stop",
    "seed", "frequency_penalty", "presence_penalty", "logprobs",
    # Gemini generateContent
    "generationConfig", "thinkingConfig", "thinkingBudget", "thinkingLevel", "includeThoughts", "systemInstruction",
    "toolConfig", "safetySettings", "cachedContent", "responseMimeType", "responseSchema", "responseJsonSchema",
    "stopSequences",
    "candidateCount", "topP", "topK", "labels",
))


def _known_field(path: str) -> bool:
    """Whether a learned field path names a field agproxy knows (:data:`KNOWN_REQUEST_FIELDS`)."""
    return path == BASIC_THINKING_LESSON or path.rsplit(".", 1)[-1] in KNOWN_REQUEST_FIELDS


class LearnedRejections:
    """What each upstream has said it rejects (field paths, ``anthropic-beta`` values).

    Filled from upstream 400s by the self-healing retry, saved in the state file so that a
    restart does not have to learn it again.

    Each upstream keeps at most :data:`MAX_LEARNED` fields and as many betas, because every lesson
    comes from what a client sent: a client inventing fields for the upstream to reject would
    otherwise grow the table without bound. Were a full table to learn nothing more, 64 junk
    fields would make a field the upstream really rejects cost an extra 400 on every later
    request. So each table is kept in order of last use (a lesson is used when it strips something from
    a request), and a new lesson pushes out the least recently useful one, choosing first among
    names agproxy does not know (:data:`KNOWN_REQUEST_FIELDS`); a lesson about a made-up name
    never pushes out one about a known field. So a field every request carries stays learned
    however many names a client invents, a known field is learned even in a table full of junk,
    and junk that is never sent again is the first to go.
    """

    def __init__(self) -> None:
        self._fields: Dict[str, collections.OrderedDict] = {}
        self._betas: Dict[str, collections.OrderedDict] = {}

    def fields(self, upstream: str) -> List[str]:
        """The field paths to strip for ``upstream``, least recently useful first."""
        return list(self._fields.get(upstream, ()))

    def betas(self, upstream: str) -> List[str]:
        """The betas to drop for ``upstream``, least recently useful first."""
        return list(self._betas.get(upstream, ()))

    def learn(self, upstream: str, fields: Iterable[str] = (), betas: Iterable[str] = ()) -> List[str]:
        """Add what is new; returns the new entries (``beta:`` prefixed for betas). Paths that carry
        a request's meaning are never taken (a state file may say anything)."""
        new = []
        for field in fields:
            if _strippable(field) and _take(self._fields.setdefault(upstream, collections.OrderedDict()), field,
                                            _known_field):
                new.append(field)
        for beta in betas:
            if 0 < len(beta) <= 100 and _take(self._betas.setdefault(upstream, collections.OrderedDict()), beta,
                                              lambda _: False):
                new.append(f"beta:{beta}")
        return new

    def used(self, upstream: str, changes: Dict[str, int]) -> None:
        """Mark the lessons that stripped something from a request (its ``learned:`` and ``beta:``
        changes) as the most recently useful."""
        for kind in changes:
            prefix, _, name = kind.partition(":")
            table = {"learned": self._fields, "beta": self._betas}.get(prefix, {}).get(upstream)
            if table is not None and name in table:
                table.move_to_end(name)

    def to_json(self, servers: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
        """What was learned, per upstream, bound to the server it was learned from (``servers``:
        each upstream's :func:`server_fingerprint`); least recently useful first."""
        names = sorted(set(self._fields) | set(self._betas))
        return {name: dict({"fields": self.fields(name), "betas": self.betas(name)},
                           **({"server": servers[name]} if servers and name in servers else {})) for name in names}

    def rebind(self, before: Dict[str, str], now: Dict[str, str]) -> None:
        """Keep only what was learned from the servers the upstreams still name (``before`` and
        ``now``: each upstream's :func:`server_fingerprint`, under the old config and a reloaded one)."""
        data = self.to_json(before)
        self._fields, self._betas = {}, {}
        self.load_json(data, now)

    def load_json(self, data: Any, servers: Optional[Dict[str, str]] = None) -> None:
        """Take entries from a saved state; anything malformed, and (given ``servers``) anything
        learned from another server than the upstream's now, is skipped."""
        if not isinstance(data, dict):
            return
        for upstream, entry in data.items():
            if servers is not None and (not isinstance(entry, dict) or entry.get("server") != servers.get(upstream)):
                continue
            if isinstance(entry, dict):
                fields, betas = entry.get("fields"), entry.get("betas")
                self.learn(upstream, [f for f in fields if isinstance(f, str)] if isinstance(fields, list) else [],
                           [b for b in betas if isinstance(b, str)] if isinstance(betas, list) else [])


def _take(table: collections.OrderedDict, name: str, known: Callable[[str], bool]) -> bool:
    """Put ``name`` in a table of lessons kept in order of use, bounded at :data:`MAX_LEARNED`:
    when full, the least recently useful unknown name goes, else (for a known name) the least
    recently useful one; an unknown name finds no room among known ones. True when taken."""
    if name in table:
        return False
    if len(table) >= MAX_LEARNED:
        victim = next((entry for entry in table if not known(entry)), None)
        if victim is None and known(name):
            victim = next(iter(table))
        if victim is None:
            return False
        del table[victim]
    table[name] = None
    return True


#: Context windows learned per upstream, one per model (a client may name any number): past
#: this the one learned longest ago is forgotten.
MAX_LEARNED_WINDOWS = 64
#: The least window taken from a server's word, as from a config (``context_window``'s minimum).
MIN_LEARNED_WINDOW = 1024


class LearnedWindows:
    """The context window an upstream's server really has for a model, learned from its
    context-length error when it is smaller than the one in effect (the configured
    ``context_window``, or none). Without it, a ``context_window`` larger than the server's
    had every request refused once and sent again smaller. Kept in the state file bound to the
    server (:func:`server_fingerprint`) and to the configured value, so that a changed config (a
    corrected ``context_window``, another base_url) forgets what was learned."""

    def __init__(self) -> None:
        self._windows: Dict[str, collections.OrderedDict] = {}

    def window(self, upstream: Upstream, model: str) -> Optional[int]:
        """The window in effect for ``model`` on ``upstream``: the learned one, else the configured one."""
        learned = self._windows.get(upstream.name, {}).get(model)
        return learned if learned is not None else upstream.context_window

    def learn(self, upstream: Upstream, model: str, window: Optional[int]) -> bool:
        """Take a window the server named; True when it is new (smaller than the one in effect)."""
        current = self.window(upstream, model)
        if window is None or window < MIN_LEARNED_WINDOW or (current is not None and window >= current):
            return False
        models = self._windows.setdefault(upstream.name, collections.OrderedDict())
        models[model] = window
        models.move_to_end(model)
        while len(models) > MAX_LEARNED_WINDOWS:
            models.popitem(last=False)
        return True

    def to_json(self, upstreams: Sequence[Upstream]) -> Dict[str, Any]:
        """What was learned, per upstream, with the server and the configured value it holds for."""
        return {u.name: {"configured": u.context_window, "server": server_fingerprint(u),
                         "models": dict(self._windows[u.name])} for u in upstreams if self._windows.get(u.name)}

    def rebind(self, before: Sequence[Upstream], now: Sequence[Upstream]) -> None:
        """Keep only the windows learned for a server and configured value that a reloaded
        config (``now``) still has."""
        data = self.to_json(before)
        self._windows = {}
        self.load_json(data, now)

    def load_json(self, data: Any, upstreams: Sequence[Upstream]) -> List[str]:
        """Take what a saved state learned for the same server and the same configured value;
        returns a line for each window taken, for the log."""
        restored: List[str] = []
        for upstream in upstreams if isinstance(data, dict) else ():
            entry = data.get(upstream.name)
            if not isinstance(entry, dict) or not isinstance(entry.get("models"), dict) or \
                    entry.get("server") != server_fingerprint(upstream) or \
                    entry.get("configured", False) != upstream.context_window:
                continue
            for model, window in list(entry["models"].items())[-MAX_LEARNED_WINDOWS:]:
                if isinstance(model, str) and len(model) <= MAX_MODEL_CHARS and _is_int(window) \
                        and self.learn(upstream, model, window):
                    restored.append(f"upstream {upstream.name!r} serves {model!r} with a {window}-token window")
        return restored


# =====================================================================================
# 9. Upstream client
#    Asyncio-native HTTP/1.1 over pooled keep-alive connections (the sans-IO ResponseParser reads
#    the answers), TLS through ssl, HTTPS_PROXY/HTTP_PROXY/NO_PROXY honoured with CONNECT tunnels.
#    The server sees one small interface: request() gives an UpstreamResponse whose body is read
#    with read_chunk() and released with close(). (bench/RESULTS.md: a thread-per-read http.client
#    relay moved 0.14x of a direct connection's events/s; this one is measured there too.)
# =====================================================================================

#: Bytes asked for per upstream read: a burst of SSE events arrives in one call, a slow stream
#: returns whatever has come, so nothing waits for a full buffer.
_UPSTREAM_READ_SIZE = 65536
#: Idle keep-alive connections kept per upstream origin; more concurrent ones are closed after use.
_MAX_IDLE_PER_ORIGIN = 32
#: Largest non-streaming upstream body agproxy buffers (a Message with long tool input is far less).
MAX_UPSTREAM_BODY_BYTES = 64 * 1024 * 1024
#: Largest error body, count_tokens answer or model list read from an upstream (real ones are a few KB).
MAX_UPSTREAM_SMALL_BODY_BYTES = 4 * 1024 * 1024
#: A head and body smaller than this go out in one write (one TCP segment for the usual request);
#: larger bodies are written apart, so they are not copied to join them.
_ONE_WRITE_BYTES = 65536
#: A large body goes to the socket this much at a time, each piece sent before the next is
#: written: the transport copies what it cannot send at once, and a whole body would be copied
#: (twice, in Python 3.11's write) for each request in flight.
_BODY_PIECE_BYTES = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class _Origin:
    """Where an upstream connection goes (and through which proxy): what the pool keeps connections by."""

    scheme: str
    host: str
    port: int
    proxy: Optional[Tuple[str, str, int, Optional[str]]]  # scheme, host, port, Proxy-Authorization


def _proxy_for(scheme: str, host: str) -> Optional[Tuple[str, str, int, Optional[str]]]:
    """The proxy from ``HTTPS_PROXY``/``HTTP_PROXY`` for this host, unless ``NO_PROXY`` exempts it."""
    import urllib.request  # here, not at the top: it pulls in http.client and email (~3 MB at start-up)

    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    parts = urllib.parse.urlsplit(proxy)
    authorization = None
    if parts.username:
        credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
    default_port = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname or "", parts.port or default_port, authorization


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, asyncio.TimeoutError)):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class _WaitingProtocol(asyncio.Protocol):
    """What agproxy's two connection protocols (an upstream's and a client's) share: the one read that
    waits for what arrives (``_waiter``) and the one write that waits for the peer to read
    (``_drain_waiter``), both woken from the transport's callbacks; a lost connection ends both. The
    attributes are the subclasses' slots."""

    __slots__ = ()
    _ended: bool
    _error: Optional[BaseException]
    _waiter: Optional[asyncio.Future]
    _writing_paused: bool
    _drain_waiter: Optional[asyncio.Future]

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._ended = True
        self._error = exc
        self._wake()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("Connection lost") if exc is None else exc)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _UpstreamConnection(_WaitingProtocol):
    """One upstream connection, as its own asyncio protocol: what arrives is kept until a read takes
    it, and the one waiting read is woken at once. A read costs one wake-up of its reader and no
    stream object (a StreamReader's read is two coroutines, a buffer copy and a waiter per read;
    its reader, writer and protocol about 1.5 KB a connection). While pooled, anything that
    arrives or an end closes it, seen here without a task watching."""

    __slots__ = ("origin", "transport", "_loop", "_received", "_size", "_ended", "_error", "_waiter",
                 "_reading_paused", "_writing_paused", "_drain_waiter", "pooled", "cut_short")

    def __init__(self, origin: _Origin) -> None:
        self.origin = origin
        self.transport: Optional[asyncio.Transport] = None
        self._loop = asyncio.get_running_loop()
        self._received: List[bytes] = []  # what arrived and no read took yet
        self._size = 0  # its bytes
        self._ended = False  # the upstream ended its side, or the connection was lost
        self._error: Optional[BaseException] = None  # why the connection was lost, if it broke
        self._waiter: Optional[asyncio.Future] = None  # the read waiting for bytes
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiter: Optional[asyncio.Future] = None
        self.pooled = False  # idle in the pool: nothing may arrive
        self.cut_short = False  # answered before the whole request was sent: never used again

    # -- the protocol (asyncio calls these) --------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.pooled:  # bytes nobody asked for would be read as the answer to the next request
            self.abort()
            return
        self._received.append(data)
        self._size += len(data)
        if self._size > _UPSTREAM_READ_SIZE * 4 and not self._reading_paused:
            self._reading_paused = True  # nobody reads it fast enough: let TCP push back
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()
        waiter = self._drain_waiter  # an answer while the request is being sent: stop sending it
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool:
        self._ended = True
        if self.pooled:  # the server closed it
            self.abort()
        self._wake()
        return False  # close the transport

    # -- what the client calls -----------------------------------------------------------

    def usable(self) -> bool:
        """Open, and nothing unread in it (bytes that came after an answer's end, in a piece of
        their own, would answer the next request)."""
        return self.transport is not None and not self.transport.is_closing() and not self._ended \
            and not self._received and not self.cut_short

    def write(self, data: Union[bytes, memoryview]) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def buffered(self) -> int:
        """Bytes written that the socket has not taken yet."""
        return self.transport.get_write_buffer_size()  # type: ignore[union-attr]

    def answered(self) -> bool:
        """Something of an answer arrived (an early refusal while the request is still being sent)."""
        return bool(self._received)

    async def drained(self) -> None:
        """Until the transport's buffer is down to its low-water mark, or an answer arrives; raises
        for a lost connection."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("Connection lost")
        if not self._writing_paused or self._received:
            return
        self._drain_waiter = self._loop.create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None

    def take(self) -> Optional[bytes]:
        """What has arrived and no read took yet (about :data:`_UPSTREAM_READ_SIZE` at most, unless
        one piece is larger); None when nothing has yet; ``b""`` at the end; the error a broken
        connection ended with."""
        received = self._received
        if not received:
            if not self._ended:
                return None
            if self._error is not None:
                raise self._error
            return b""
        if len(received) == 1:
            data = received.pop()
        else:
            count, size = 0, 0
            while count < len(received) and size < _UPSTREAM_READ_SIZE:
                size += len(received[count])
                count += 1
            data = b"".join(received[:count])
            del received[:count]
        self._size -= len(data)
        if self._reading_paused and self._size <= _UPSTREAM_READ_SIZE:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return data

    def arrival(self) -> asyncio.Future:
        """A future done once something arrives (or the connection ends): what a read awaits when
        :meth:`take` has nothing (a future, not a coroutine: the read's own frame is all that waits)."""
        self._waiter = self._loop.create_future()
        return self._waiter

    async def read(self, deadline: Optional[float] = None) -> bytes:
        """:meth:`take`, waiting until something comes; :class:`asyncio.TimeoutError` when nothing
        did by the loop time ``deadline``."""
        data = self.take()
        while data is None:
            waiter = self.arrival()
            timer = None if deadline is None else self._loop.call_at(deadline, _time_out, waiter)
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
            data = self.take()
        return data

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _time_out(waiter: asyncio.Future) -> None:
    """A read's deadline: the read waiting on ``waiter`` raises :class:`asyncio.TimeoutError`."""
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


class UpstreamResponse:
    """An upstream answer: status and headers now, the body chunk by chunk as it arrives."""

    def __init__(self, client: UpstreamClient, conn: _UpstreamConnection, parser: ResponseParser, head: ResponseHead,
                 timeout_s: float) -> None:
        self.status = head.status
        self.headers: Headers = head.headers
        self._client = client
        self._conn = conn
        self._parser = parser
        self.timeout_s = timeout_s
        self._draining = False  # its whole answer is out; the end of its body is read in the background
        #: closed by agproxy before its end (a deadline, a departed client), not ended by the upstream
        self.aborted = False
        #: let go because nobody wants the rest (its client left): a read it cuts short is no fault
        self.abandoned = False
        self._done = False
        self._loop = asyncio.get_running_loop()
        #: when the read in progress began (None: no read waits), watched by one timer per response
        #: (:meth:`_check_read`), moved on lazily: no task and no timer per read
        self._read_since: Optional[float] = None
        self._read_timer: Optional[asyncio.TimerHandle] = None
        self._read_timed_out = False
        self._wants_data = False  # the parser needs more bytes before it has anything (it said so last)

    def header(self, name: str) -> Optional[str]:
        return header_value(self.headers, name)

    @property
    def is_event_stream(self) -> bool:
        return (self.header("content-type") or "").lower().startswith("text/event-stream")

    async def read_chunk(self) -> bytes:
        """All of the body that has arrived, as soon as any has (many events in one piece when they
        came together); ``b""`` at its end."""
        parser = self._parser
        pieces: List[bytes] = []
        try:
            while not self._done:
                if self._wants_data:  # the parser said so when the last call ended: read at once
                    self._wants_data = False
                    event = NEED_DATA
                else:
                    event = parser.next_event()
                if isinstance(event, bytes):
                    pieces.append(event)
                    if parser.wants_data:  # what next_event would say next: read at once
                        self._wants_data = True
                        break
                    continue
                if event == END:
                    self._ended()
                    break
                if pieces:
                    self._wants_data = True
                    break
                data = self._conn.take()
                while data is None:  # nothing came yet: wait for it (in this frame alone, no coroutine
                    # per read), watched by the read timer (:meth:`_check_read`)
                    self._read_since = self._loop.time()
                    if self._read_timer is None:
                        self._read_timer = self._loop.call_at(self._read_since + self.timeout_s, self._check_read)
                    try:
                        await self._conn.arrival()
                    finally:
                        self._read_since = None
                    if self._read_timed_out:  # what the cut connection gave (its end, say) is not the answer
                        raise asyncio.TimeoutError
                    data = self._conn.take()
                parser.feed(data)
        except (OSError, asyncio.TimeoutError, UpstreamFailure) as exc:
            self.close()
            reason = exc.message if isinstance(exc, UpstreamFailure) else _describe_os_error(exc)
            raise UpstreamFailure(f"upstream connection broke mid-response ({reason})") from None
        return b"".join(pieces)

    def _ended(self) -> None:
        """The body has ended: the connection goes back to the pool (if it may be reused)."""
        self._done = True
        self._stop_read_timer()
        self._client.release(self._conn, self._parser.reusable)

    def _check_read(self) -> None:
        """The read timer: a read that has waited ``timeout_s`` is cut; one that began later is
        watched on to its own end; with no read waiting, the next read sets the timer again."""
        self._read_timer = None
        since = self._read_since
        if since is None or self._done:
            return
        due = since + self.timeout_s
        if self._loop.time() < due:
            self._read_timer = self._loop.call_at(due, self._check_read)
            return
        self._read_timed_out = True
        self._conn.abort()  # the waiting read wakes up with the connection's end

    def _stop_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    async def read_all(self, limit: int = MAX_UPSTREAM_BODY_BYTES) -> bytes:
        """The whole body, refused past ``limit`` bytes."""
        body = bytearray()
        while True:
            chunk = await self.read_chunk()
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > limit:
                self.close()
                raise UpstreamFailure(f"upstream body exceeds {limit} bytes")

    def abandon(self) -> None:
        """Nobody wants the rest (its client left): close it, and a read this cuts short is no fault."""
        self.abandoned = True
        self.close()

    def drain(self) -> None:
        """The answer is whole and out: read the end of its body in the background (so that the
        connection can be used again), bounded; from now on only that reader closes it."""
        self._draining = True
        if self._ended_already():
            return
        task = asyncio.ensure_future(_drain_after_stop(self))
        _DRAINING.add(task)
        task.add_done_callback(_DRAINING.discard)
        self._client.finishing(self._conn.origin, task)

    def _ended_already(self) -> bool:
        """Whether the end of the body came with the answer's last event (a short answer's usually
        does) or just after it, read now: then no background read and no timer are needed. Past
        :data:`_AFTER_STOP_BYTES` more, or a body broken there, the connection is let go."""
        parser, extra = self._parser, 0
        try:
            while not self._done:
                event = NEED_DATA if self._wants_data else parser.next_event()
                self._wants_data = False
                if isinstance(event, bytes):
                    extra += len(event)
                    if extra > _AFTER_STOP_BYTES:
                        self.close(force=True)
                elif event == END:
                    self._ended()
                else:
                    data = self._conn.take()
                    if data is None:  # the end is still to come
                        self._wants_data = True
                        return False
                    parser.feed(data)
        except (OSError, UpstreamFailure):  # the message is whole; only the connection is lost
            self.close(force=True)
        return True

    def close(self, force: bool = False) -> None:
        """Release the connection; an unfinished body aborts it at once. While the end of a whole
        answer's body is read in the background (:meth:`drain`), only that reader closes it
        (``force``): the relay's own close at its end leaves it be."""
        if self._draining and not force:
            return
        self._stop_read_timer()
        if not self._done:
            self._done = self.aborted = True
            self._conn.abort()


def _read_outcome(task: asyncio.Future) -> None:
    """Read a finished task's exception, so that asyncio does not log it as never retrieved: when
    the caller of ``wait_for`` is cancelled just as the task fails (a fetch for /v1/models left
    behind at its deadline, whose upstream broke at that moment), ``wait_for`` re-raises the
    cancellation and drops the task's own failure, which nobody is waiting for any more."""
    if not task.cancelled():
        task.exception()


async def _sent(conn: _UpstreamConnection, deadline: float) -> None:
    """Wait until the socket has taken what was written (down to the transport's low-water mark)
    by the loop time ``deadline``, else :class:`asyncio.TimeoutError`."""
    if not conn.buffered():
        return  # nothing to wait for (the usual case): no timer
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        raise asyncio.TimeoutError
    await asyncio.wait_for(conn.drained(), left)


#: URLs whose origin, target and Host :class:`UpstreamClient` keeps: the Messages and Chat URLs of
#: every upstream, and Gemini's, which name a model each; past this the kept ones are dropped.
_MAX_KEPT_ADDRESSES = 256


class UpstreamClient:
    """Sends requests upstream over asyncio connections, reusing them (one TLS handshake each)."""

    def __init__(self) -> None:
        self._idle: Dict[_Origin, List[_UpstreamConnection]] = {}
        #: made at the first https connection: loading the system's trusted certificates takes ~10 ms
        #: and ~1 MB, which an agproxy of plain-http upstreams (a local model) never needs
        self._ssl_context: Optional[ssl.SSLContext] = None
        self._proxies: Dict[Tuple[str, str], Any] = {}
        self._addresses: Dict[str, Tuple[_Origin, str, str]] = {}  # by URL (:meth:`_address`)
        #: per origin, the background reads of answers' last bytes (:meth:`UpstreamResponse.drain`),
        #: each of which gives its connection back to the pool when the body's end comes
        self._finishing: Dict[_Origin, Set[asyncio.Future]] = {}
        #: per origin, the requests waiting for one of those drains (each waits for a drain of its own)
        self._awaiting_drain: Dict[_Origin, int] = {}

    async def request(self, method: str, url: str, headers: Headers, body: bytes = b"", *,
                      timeout_s: float = 600.0, connect_timeout_s: float = 10.0) -> UpstreamResponse:
        """Send a request and return once the status line and headers are in.

        Raises :class:`UpstreamFailure` (502) when the upstream cannot be reached, 504 on a timeout.
        """
        addressed = self._addresses.get(url)
        if addressed is None:
            addressed = self._address(url)
        origin, target, host_header = addressed
        request_line = f"{method} {target} HTTP/1.1"
        fields: Headers = [("Host", host_header)]
        if origin.proxy and origin.scheme == "http" and origin.proxy[3]:
            fields.append(("Proxy-Authorization", origin.proxy[3]))
        fields += headers
        if body or method in ("POST", "PUT", "PATCH"):
            fields.append(("Content-Length", str(len(body))))
        head = encode_head(request_line, fields)
        loop = asyncio.get_running_loop()
        while True:
            conn, reused = await self._take(origin, connect_timeout_s)
            # timeout_s bounds sending the request and reading the whole head: an upstream that
            # reads no body, or trickles its head, cannot hold the request (and its account's slot)
            deadline = loop.time() + timeout_s
            stage = "sending the request (it read no more of it)"
            try:
                conn.write(head + body if len(body) < _ONE_WRITE_BYTES else head)
                pieces = memoryview(body) if len(body) >= _ONE_WRITE_BYTES else memoryview(b"")
                try:
                    for start in range(0, len(pieces), _BODY_PIECE_BYTES):
                        await _sent(conn, deadline)
                        if conn.answered():
                            break
                        conn.write(pieces[start:start + _BODY_PIECE_BYTES])
                    else:
                        await _sent(conn, deadline)
                except (OSError, asyncio.TimeoutError):
                    if not conn.answered():
                        raise
                if conn.answered() and conn.buffered():
                    # an upstream that refuses a body on its head (nginx's 413) answers, then closes
                    # or reads no more: its answer is the answer, and the connection ends with it
                    conn.cut_short = True
                stage = "waiting for the answer"
                parser = ResponseParser(method)
                while True:
                    event = parser.next_event()
                    if isinstance(event, ResponseHead):
                        return UpstreamResponse(self, conn, parser, event, timeout_s)
                    if deadline <= loop.time():
                        raise asyncio.TimeoutError
                    parser.feed(await conn.read(deadline))  # its own timer: no task per read
            except asyncio.TimeoutError:
                conn.abort()
                raise UpstreamFailure(f"upstream {origin.host}:{origin.port} timed out {stage}", status=504) from None
            except (OSError, UpstreamFailure) as exc:
                conn.abort()
                if reused and isinstance(exc, (ConnectionError, UpstreamClosed)):
                    continue  # the server closed an idle keep-alive connection; try a fresh one
                reason = exc.message if isinstance(exc, UpstreamFailure) else _describe_os_error(exc)
                raise UpstreamFailure(f"upstream {origin.host}:{origin.port} failed ({reason})") from None
            except BaseException:
                conn.abort()
                raise

    def _address(self, url: str) -> Tuple[_Origin, str, str]:
        """Where a request to ``url`` goes: its origin (and proxy), its request target and its
        ``Host``; kept for the next request to the same URL (one or a few per upstream)."""
        parts = urllib.parse.urlsplit(url)
        scheme, host = parts.scheme, parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, host)
        if key not in self._proxies:
            self._proxies[key] = _proxy_for(scheme, host)
        origin = _Origin(scheme, host, port, self._proxies[key])
        host_header = host if ":" not in host else f"[{host}]"
        if port != (443 if scheme == "https" else 80):
            host_header += f":{port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if origin.proxy and scheme == "http":
            target = "http://" + host_header + target  # absolute form, for the proxy
        if len(self._addresses) >= _MAX_KEPT_ADDRESSES:  # URLs that name a client's model (Gemini's) vary
            self._addresses.clear()
        self._addresses[url] = origin, target, host_header
        return origin, target, host_header

    async def fetch(self, method: str, url: str, headers: Headers, body: bytes = b"", *, deadline_s: float,
                    limit: int = MAX_UPSTREAM_SMALL_BODY_BYTES) -> Tuple[int, bytes]:
        """A small exchange (a model list, a token count, a probe): the status and the whole body,
        all within ``deadline_s``, so an upstream that trickles cannot hold it. Raises
        :class:`UpstreamFailure` (504 when the deadline passes)."""

        async def exchange() -> Tuple[int, bytes]:
            response = await self.request(method, url, headers, body, timeout_s=deadline_s,
                                          connect_timeout_s=deadline_s)
            try:
                return response.status, await response.read_all(limit)
            finally:
                response.close()

        exchanging = asyncio.ensure_future(exchange())
        exchanging.add_done_callback(_read_outcome)
        try:
            return await asyncio.wait_for(exchanging, deadline_s)
        except asyncio.TimeoutError:
            raise UpstreamFailure(f"no whole answer from {url.split('?')[0][:200]} within {deadline_s:g} s",
                                  status=504) from None

    def finishing(self, origin: _Origin, drain: asyncio.Future) -> None:
        """A connection of ``origin`` will be back in the pool when ``drain`` (bounded) has read its
        answer's end: until then, a request for that origin waits for it rather than connecting."""
        drains = self._finishing.setdefault(origin, set())
        drains.add(drain)
        drain.add_done_callback(drains.discard)

    async def _take(self, origin: _Origin, connect_timeout_s: float) -> Tuple[_UpstreamConnection, bool]:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + _AFTER_STOP_S  # as long as one drain may take: others' drains never starve it
        while True:
            idle = self._idle.get(origin) or []
            while idle:
                conn = idle.pop()
                conn.pooled = False
                if conn.usable():
                    return conn, True
                conn.abort()
            # an answer whose end came after its client's next request (the terminating chunk in a
            # packet of its own): its connection is worth waiting for, a new one costs a handshake;
            # but only one request per drain waits: the others would wait for a connection that
            # another takes, then again for the next drain (200 streams ending and beginning at
            # once: a new one waited ~10 ms at p50 and up to ~100 ms for its turn)
            drains = self._finishing.get(origin)
            waiting = self._awaiting_drain.get(origin, 0)
            left = give_up - loop.time()
            if not drains or waiting >= len(drains) or left <= 0:
                break
            self._awaiting_drain[origin] = waiting + 1
            try:
                await asyncio.wait(set(drains), timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._awaiting_drain[origin] -= 1
        try:
            return await asyncio.wait_for(self._connect(origin), connect_timeout_s), False
        except asyncio.TimeoutError:
            raise UpstreamFailure(f"cannot reach upstream {origin.host}:{origin.port} (connect timed out)",
                                  status=504) from None
        except UnicodeError:
            raise UpstreamFailure(f"cannot reach upstream {origin.host[:100]}: its name cannot be looked up") from None
        except (OSError, UpstreamFailure) as exc:
            reason = exc.message if isinstance(exc, UpstreamFailure) else _describe_os_error(exc)
            raise UpstreamFailure(f"cannot reach upstream {origin.host}:{origin.port} ({reason})") from None

    async def _connect(self, origin: _Origin) -> _UpstreamConnection:
        if origin.scheme == "https" and self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        tls = self._ssl_context if origin.scheme == "https" else None
        proxy = origin.proxy
        loop = asyncio.get_running_loop()
        if proxy is None:
            _, conn = await loop.create_connection(lambda: _UpstreamConnection(origin), origin.host, origin.port,
                                                   ssl=tls)
            return conn
        _, proxy_host, proxy_port, authorization = proxy
        if origin.scheme == "http":
            _, conn = await loop.create_connection(lambda: _UpstreamConnection(origin), proxy_host, proxy_port)
            return conn
        sock = await _connect_tunnel(proxy_host, proxy_port, origin.host, origin.port, authorization)
        _, conn = await loop.create_connection(lambda: _UpstreamConnection(origin), sock=sock, ssl=tls,
                                               server_hostname=origin.host)
        return conn

    def release(self, conn: _UpstreamConnection, reusable: bool) -> None:
        """Take back a connection whose response was read to the end."""
        if not reusable or not conn.usable():
            conn.abort()
            return
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) < _MAX_IDLE_PER_ORIGIN:
            conn.pooled = True  # what arrives now, or an end, closes it (data_received, eof_received)
            idle.append(conn)
        else:
            conn.abort()

    def shutdown(self) -> None:
        """Close idle connections."""
        for conns in self._idle.values():
            for conn in conns:
                conn.abort()
        self._idle.clear()


async def _connect_tunnel(proxy_host: str, proxy_port: int, host: str, port: int,
                          authorization: Optional[str]) -> socket.socket:
    """A socket through an HTTP proxy's CONNECT tunnel, ready for TLS to ``host``."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(proxy_host, proxy_port, type=socket.SOCK_STREAM)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, address)
        target = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"  # RFC 9110 9.3.6: authority-form
        headers: Headers = [("Host", target)] + ([("Proxy-Authorization", authorization)] if authorization else [])
        await loop.sock_sendall(sock, encode_head(f"CONNECT {target} HTTP/1.1", headers))
        parser = ResponseParser("CONNECT")
        while True:
            event = parser.next_event()
            if isinstance(event, ResponseHead):
                break
            parser.feed(await loop.sock_recv(sock, 4096))
        if event.status != 200:
            raise UpstreamFailure(f"proxy {proxy_host}:{proxy_port} refused the tunnel (HTTP {event.status})")
        return sock
    except BaseException:
        sock.close()
        raise


# =====================================================================================
# 10. The HTTP shell
#    HttpServer runs the connections, each its own asyncio protocol (admission, timeouts, 100-continue,
#    linger, the watch for a client that leaves, framing, the access log) and calls one
#    Application; it knows nothing of Anthropic. Errors become responses in exactly one place:
#    error_response().
# =====================================================================================

#: Bytes read from a client socket at a time.
_CLIENT_READ_SIZE = 65536
#: Pipelined bytes we accept from a client while its previous request is being answered; past
#: this we stop reading and let TCP push back.
_MAX_PIPELINED_BYTES = 1024 * 1024
#: After an error answer that closes the connection, how long and how much we keep reading (and
#: discarding) so the client receives the answer instead of a reset.
_LINGER_S = 2.0
_LINGER_BYTES = 4 * 1024 * 1024
#: After a client's end of input, how often its socket is checked for the reset that a client
#: closed for good answers the next write with (an interim 100 Continue, or the answer itself).
_PROBE_INTERVAL_S = 0.25


def new_request_id() -> str:
    """A fresh id for the ``request-id`` header and the access log."""
    return "req_" + os.urandom(12).hex()


@dataclasses.dataclass(eq=False)
class Response:
    """A complete response to write."""

    status: int
    headers: Headers
    body: bytes = b""


@dataclasses.dataclass(eq=False)
class StreamingResponse:
    """A response whose body is relayed chunk by chunk; ``abort`` cuts its source; ``ending``
    gives the last bytes of a stream the shutdown cuts (its protocol's error, from an error type
    and words; none: the stream just ends); ``ping`` gives a keep-alive, written whenever the client
    has been sent nothing for ``ping_interval_s`` (None: never; the source sends its own)."""

    status: int
    headers: Headers
    chunks: AsyncIterator[bytes]
    abort: Callable[[], None]
    ending: Optional[Callable[[str, str], bytes]] = None
    ping: Optional[Callable[[], bytes]] = None
    ping_interval_s: Optional[float] = None


def json_response(status: int, payload: Any, headers: Headers = ()) -> Response:
    """A JSON response."""
    body = _COMPACT_JSON.encode(payload).encode("utf-8", "replace")
    return Response(status, [("Content-Type", "application/json")] + list(headers), body)


#: 4xx answers a retry can change: a timeout, a conflict, a rate limit.
_RETRYABLE_4XX = (408, 409, 429)


def error_response(exc: AgproxyError, body: Any = None, status: Optional[int] = None) -> Response:
    """The one place an :class:`AgproxyError` becomes an HTTP response: its ``body`` and ``status``
    (a client dialect's shape of it; by default Anthropic's). An answer that retrying cannot change (a 4xx
    but the three above, or an error marked ``final``) says ``x-should-retry: false``, so SDKs and
    Claude Code fail at once instead of retrying for minutes."""
    headers = list(exc.headers)
    if exc.final or (400 <= exc.status < 500 and exc.status not in _RETRYABLE_4XX):
        headers.append(("x-should-retry", "false"))
    return json_response(exc.status if status is None else status, exc.body() if body is None else body, headers)


@dataclasses.dataclass(eq=False)
class AttemptRecord:
    """One attempt at an upstream, as the record of its request keeps it."""

    upstream: str
    account: str
    status: int  # what the upstream answered (0: no answer at all)
    outcome: str  # one of ATTEMPT_OUTCOMES
    reason: str = ""  # the retry engine's words for it


#: The usage fields of an Anthropic answer, and the record's (and the log's, metrics' and ledger's) names for them.
USAGE_FIELDS = (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"),
                ("cache_read_input_tokens", "cache_read_tokens"),
                ("cache_creation_input_tokens", "cache_write_tokens"))
#: Characters of an error's words an access line keeps.
MAX_RECORD_ERROR_CHARS = 300
#: Characters of a request's path the record keeps (real paths are short; a client may send 8 KB).
MAX_RECORD_PATH_CHARS = 200
#: What would break a log line in two or forge one: controls, and what readers take for a line end.
_LINE_BREAKING = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` with every character that would break a log line escaped (``\\n``, ``\\u2028``):
    a model name or an upstream's words cannot forge another line."""
    if not _LINE_BREAKING.search(text):
        return text
    return _LINE_BREAKING.sub(lambda m: json.dumps(m.group())[1:-1], text)


@dataclasses.dataclass(eq=False)
class RequestRecord:
    """Everything one request leaves behind, filled in as it is answered: the shell writes the HTTP
    facts (who, what, status, bytes, times), the gateway the rest (model, upstream, account, each
    attempt, tokens). Every answer fills it the same way, streamed, whole, local, refused or cut;
    the access log, the metrics and the usage ledger read it when it ends, and none of them decodes
    an answer again."""

    request_id: str
    client_ip: str
    method: str
    path: str
    #: wall-clock and monotonic start
    started_at: float = dataclasses.field(default_factory=time.time)
    started: float = dataclasses.field(default_factory=time.monotonic)
    client: Optional[str] = None  # the client's name, where its key has one
    route: str = ""  # the handler's name ("messages", "count_tokens", ...; "" for none)
    model: str = ""  # as asked
    mapped_model: str = ""  # as sent upstream
    upstream: str = ""
    account: str = ""
    stream: bool = False
    local: str = ""  # what answered without an upstream: "warmup", "demo"
    passthrough: bool = False  # the answer passed untranslated between a client and an upstream of one protocol
    attempts: List[AttemptRecord] = dataclasses.field(default_factory=list)
    status: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    first_byte: Optional[float] = None  # monotonic time the answer's first body bytes went out
    ended: Optional[float] = None
    bytes_sent: int = 0
    error: str = ""  # the upstream's or agproxy's words for a failure
    #: what cut the answer short ("client closed the connection", "cut by the shutdown")
    note: str = ""

    def add_usage(self, usage: Any) -> None:
        """Take the counts of an Anthropic ``usage`` object (message_start's, then message_delta's,
        whose counts are running totals): each present count replaces the one before."""
        if not isinstance(usage, dict):
            return
        for field, name in USAGE_FIELDS:
            value = upstream_count(usage.get(field))
            if value is not None:
                setattr(self, name, value)

    def client_left(self) -> None:
        """The client closed its connection before its answer ended: the record says so (499,
        nginx's "client closed request"), and nothing else logs it as a fault."""
        self.status = 499
        self.note = "client closed the connection"

    def fail(self, words: str) -> None:
        """Keep the words of the failure that ends the request (the first that is said)."""
        if not self.error:
            self.error = words[:MAX_RECORD_ERROR_CHARS]

    @property
    def ttft_ms(self) -> Optional[float]:
        """Time to the first bytes of the answer's body (its head of events, for a stream); none for
        an error answer, which carries no token (a client that left mid-answer had its first ones)."""
        if self.first_byte is None or (self.status >= 400 and self.status != 499):
            return None
        return (self.first_byte - self.started) * 1000

    @property
    def duration_ms(self) -> float:
        return ((self.ended if self.ended is not None else time.monotonic()) - self.started) * 1000

    @property
    def tokens(self) -> int:
        """Every token the answer counted: input, output and cache."""
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens

    def fields(self) -> Dict[str, Any]:
        """The record under the pinned names of a JSON access line (``client`` only where there is one)."""
        fields: Dict[str, Any] = {
            "request_id": self.request_id, "client_ip": self.client_ip, "method": self.method, "path": self.path,
            "status": self.status, "model": self.model or None, "mapped_model": self.mapped_model or None,
            "upstream": self.upstream or None, "account": self.account or None, "stream": self.stream,
            "attempts": len(self.attempts), "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens, "cache_write_tokens": self.cache_write_tokens,
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 1),
            "duration_ms": round(self.duration_ms, 1), "bytes_sent": self.bytes_sent,
            "error": " ".join(x for x in (self.error, self.note) if x) or None,
        }
        if self.client is not None:
            fields["client"] = self.client
        if self.local:
            fields["local"] = self.local
        if self.passthrough:
            fields["passthrough"] = True
        return fields

    def line(self) -> str:
        """The record as one aligned line of text with the same facts as :meth:`fields`."""
        who = f"{self.upstream or '-'}/{self.account or '-'}" if self.upstream or self.account else "- -"
        model = self.model or "-"
        if self.mapped_model and self.mapped_model != self.model:
            model += f"->{self.mapped_model}"
        model = one_line(model)
        ttft = "-" if self.ttft_ms is None else f"{self.ttft_ms:.0f}ms"
        parts = [f"{self.request_id} {self.client_ip:<15} {self.method} {self.path} {self.status:3d} {who}"]
        if self.model:
            parts.append(f"{model} {'stream' if self.stream else 'json'} tries={len(self.attempts)} "
                         f"in={self.input_tokens} out={self.output_tokens} cache_read={self.cache_read_tokens} "
                         f"cache_write={self.cache_write_tokens} ttft={ttft}")
        if self.client is not None:
            parts.append(f"client={self.client}")
        if self.local:
            parts.append(f"local={self.local}")
        if self.passthrough:
            parts.append("passthrough")
        parts.append(f"{self.duration_ms:.0f}ms {self.bytes_sent}B")
        error = " ".join(x for x in (self.error, self.note) if x)
        if error:
            parts.append(error)
        return one_line("  ".join(parts))


class _KeepAlive:
    """Writes a stream's keep-alive (``ping()``'s bytes, framed) whenever its client has been sent
    nothing for ``interval_s``: a model that thinks for a minute behind an upstream that sends no pings
    of its own (OpenAI, Gemini) must not look like a dead connection to the client or a proxy between.
    One timer per stream, moved on lazily (it fires at most once per interval, not once per write), so
    the relay waits on its upstream alone; never while the client has not read what it was sent (the
    transport is paused) and never after :meth:`stop`. A ping goes out only while the relay waits for
    its upstream or the client, between whole chunks, so it never splits one."""

    def __init__(self, conn: _Connection, record: RequestRecord, ping: Callable[[], bytes], interval_s: float,
                 chunked: bool) -> None:
        self.conn = conn
        self.record = record
        self.ping = ping
        self.interval_s = interval_s
        self.chunked = chunked
        self.loop = asyncio.get_running_loop()
        self.last_write = self.loop.time()
        self._timer: Optional[asyncio.TimerHandle] = self.loop.call_at(self.last_write + interval_s, self._check)

    def wrote(self) -> None:
        """Something went to the client just now."""
        self.last_write = self.loop.time()

    def stop(self) -> None:
        """No more pings: the stream has ended."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        now, due = self.loop.time(), self.last_write + self.interval_s
        if now >= due:
            if not self.conn.gone and not self.conn.writing_paused:  # a client that reads nothing gets no more
                data = self.ping()
                if data:
                    self.record.bytes_sent += len(data)
                    self.conn.write(encode_chunk(data) if self.chunked else data)
                    self.last_write = now
            due = now + self.interval_s
        self._timer = None if self.conn.gone else self.loop.call_at(due, self._check)


class _Exchange:
    """One request as the shell answers it: the request, its record, and what to call if its
    client leaves (a read of the upstream waiting on it is cut)."""

    def __init__(self, request: Request, on_client_gone: List[Callable[[], None]], record: RequestRecord,
                 admission: Any = None) -> None:
        self.request = request
        self.on_client_gone = on_client_gone
        self.record = record
        #: what the application's ``admit`` made of the request's head, when it ran on the head alone
        #: (None: not yet, so ``handle`` admits it); the application's own value, opaque to the shell
        self.admission = admission

    @property
    def id(self) -> str:
        return self.record.request_id

    def client_left(self) -> None:
        self.record.client_left()


class _Connection(_WaitingProtocol):
    """One client connection, as its own asyncio protocol (as :class:`_UpstreamConnection` is for an
    upstream): what arrives is kept until a read takes it (pipelined requests included), and the one
    waiting read is woken at once; a departure is seen where asyncio reports it (``connection_lost``,
    ``eof_received``), with no task watching; writes go to the transport and wait only while it is
    paused. A StreamReader and StreamWriter would cost two coroutines, a buffer copy and a waiter per
    read, a watcher task per request and about 1.5 KB a connection. Also its parser, the state of the
    request it answers, and the callbacks to run if the client leaves."""

    __slots__ = ("parser", "serve", "transport", "busy", "gone", "responding", "answering", "body_held", "on_gone",
                 "head", "admission", "peer", "client_ip", "_loop", "_received", "_size", "_ended", "_error",
                 "_waiter", "_reading_paused", "_writing_paused", "_drain_waiter", "_probe")

    def __init__(self, parser: RequestParser, serve: Callable[[_Connection], Awaitable[None]]) -> None:
        self.parser = parser
        self.serve = serve  # what runs the connection, in a task of its own, once it is made
        self.transport: Optional[asyncio.Transport] = None
        self.busy = False
        self.gone = False
        self.responding = False  # the answer's head is written: no interim answer may follow
        #: the HTTP version of the request being answered, while it is (None: none is); a departure
        #: then is the client leaving
        self.answering: Optional[Tuple[int, int]] = None
        self.body_held = 0  # bytes of max_inflight_body_bytes its request holds
        self.on_gone: List[Callable[[], None]] = []
        self.head: Optional[Request] = None  # the request whose head was read last (a refusal names it)
        #: what the application made of that head when it admitted it already (a bodied one, before its body)
        self.admission: Any = None
        self.peer = self.client_ip = "-"
        self._loop = asyncio.get_running_loop()
        self._received: List[bytes] = []  # what arrived and no read took yet
        self._size = 0  # its bytes
        self._ended = False  # the client ended its side, or the connection was lost
        self._error: Optional[BaseException] = None  # why the connection was lost, if it broke
        self._waiter: Optional[asyncio.Future] = None  # the read waiting for bytes
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiter: Optional[asyncio.Future] = None
        self._probe: Optional[asyncio.TimerHandle] = None  # the next look at a half-closed client's socket

    # -- the protocol (asyncio calls these) --------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.client_ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self._loop.create_task(self.serve(self))

    def data_received(self, data: bytes) -> None:
        self._received.append(data)
        self._size += len(data)
        # while a request is answered, pipelined bytes are kept up to a bound; else a read takes them at once
        if self._size > (_CLIENT_READ_SIZE * 2 if self.answering is None else _MAX_PIPELINED_BYTES) \
                and not self._reading_paused:
            self._reading_paused = True  # let TCP push back
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def eof_received(self) -> bool:
        self._ended = True
        self._wake()
        if self.answering is not None:
            self._look_for_departure()
        return True  # HTTP lets a client half-close after its request: its answer still goes out

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        super().connection_lost(exc)
        if self.answering is not None:
            self.client_left()

    # -- the watch for a client that leaves -----------------------------------------------

    def watch(self, version: Tuple[int, int]) -> None:
        """A request of HTTP ``version`` is being answered from now on: a departure is the client leaving."""
        self.answering = version
        if self.transport is None or self.transport.is_closing():
            self.client_left()
        elif self._ended:  # the client ended its side with its request
            self._look_for_departure()

    def unwatch(self) -> None:
        """The request's answer has ended."""
        self.answering = None
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None

    def _look_for_departure(self) -> None:
        """The client ended its side while its request is answered. That alone does not mean it left:
        HTTP lets a client half-close after its request, and it still reads the answer. To tell that
        from a client that closed for good (an interrupted SDK or Claude Code), its socket is checked
        while the answer goes out: a closed client's system answers the next write with a reset. While
        nothing of the answer is written yet, an HTTP/1.1 client is sent an interim ``100 Continue``
        (every client skips it) to draw that reset at once."""
        if self._probe is not None or self.gone:
            return
        if self.answering is not None and self.answering >= (1, 1) and not self.responding:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
        self._probe = self._loop.call_later(_PROBE_INTERVAL_S, self._probe_socket)

    def _probe_socket(self) -> None:
        """Look at the socket for the reset (no read is pending to see it); again later until the answer ends."""
        self._probe = None
        sock = self.transport.get_extra_info("socket")  # type: ignore[union-attr]
        try:
            failed = sock is None or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
        except OSError:
            failed = True
        if failed or self.transport.is_closing():  # type: ignore[union-attr]
            self.client_left()
        elif self.answering is not None:
            self._probe = self._loop.call_later(_PROBE_INTERVAL_S, self._probe_socket)

    def client_left(self) -> None:
        if not self.gone:
            self.gone = True
            for callback in self.on_gone:
                callback()

    # -- what the shell calls -------------------------------------------------------------

    def take(self) -> Optional[bytes]:
        """What has arrived and no read took yet; None when nothing has yet; ``b""`` at the client's
        end; the error a broken connection ended with."""
        received = self._received
        if not received:
            if not self._ended:
                return None
            if self._error is not None:
                raise self._error
            return b""
        data = b"".join(received)  # one piece (the usual case) is returned as it is
        received.clear()
        self._size = 0
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return data

    async def read(self, timeout: float) -> Optional[bytes]:
        """:meth:`take`, waiting until something comes; None when ``timeout`` passes first. The wait is
        one future under one timer (no ``wait_for``: no task, no second turn of the loop)."""
        data = self.take()
        while data is None:
            waiter = self._waiter = self._loop.create_future()
            timer = self._loop.call_later(timeout, _time_out, waiter)
            try:
                await waiter
            except asyncio.TimeoutError:
                return None
            finally:
                timer.cancel()
                self._waiter = None
            data = self.take()
        return data

    def write(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    @property
    def writing_paused(self) -> bool:
        """True while the client has not read what it was sent (the transport's buffer is full), and
        until a write that waited for it has gone on: the loop may run a due timer between the two,
        and a ping there would land inside the event being written in parts (a Responses text)."""
        return self._writing_paused or self._drain_waiter is not None

    async def drained(self, timeout: float) -> None:
        """Until the transport's buffer is down to its low-water mark (at once unless it is paused);
        raises for a lost connection, and cuts one whose client read nothing for ``timeout``."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("Connection lost")
        if not self._writing_paused:
            return
        waiter = self._drain_waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout, _time_out, waiter)
        try:
            await waiter
        except asyncio.TimeoutError:
            self.transport.abort()
            raise ConnectionResetError(f"the client read nothing for {timeout:g} s") from None
        finally:
            timer.cancel()
            self._drain_waiter = None


class _Timeout(Exception):
    pass


#: The answer to a request the shutdown cuts before its answer began (a stream that had begun
#: ends with an error event instead): worth retrying, against the restarted agproxy.
_SHUTTING_DOWN = AgproxyError("agproxy is shutting down: this request was cut before its answer began "
                              "(shutdown_grace_s); retry it", status=503, error_type="overloaded_error")


class Application:
    """What the HTTP shell serves: ``admit`` checks a request's head before its body is read (and
    raises an :class:`AgproxyError` to refuse it); ``handle`` answers a whole request; ``finished``
    is told of every request's record once its answer has ended, refused and cut ones included."""

    def admit(self, request: Request) -> Any:
        """Check a request's head; what it returns is handed back as ``exchange.admission``."""
        raise NotImplementedError

    async def handle(self, request: Request, exchange: _Exchange) -> Union[Response, StreamingResponse]:
        raise NotImplementedError

    def finished(self, record: RequestRecord) -> None:
        """Log the record's access line."""
        logging.getLogger("agproxy.access").info("%s", record.line())

    def error_answer(self, exc: AgproxyError, record: RequestRecord) -> Response:
        """The answer to a request that failed with ``exc`` (what ``record`` says of it may add headers)."""
        return error_response(exc)


class HttpServer:
    """The HTTP/1.1 shell, each connection its own asyncio protocol: admission and ``max_connections``, the connection
    loop, timeouts, ``100 Continue``, the linger after an error, the watch for a client that leaves,
    response framing and writing (every byte through the :class:`Redactor`), the access log. It
    calls one :class:`Application` and knows nothing of Anthropic."""

    def __init__(self, config: Config, app: Application, redact: Redactor) -> None:
        self.config = config
        self.app = app
        self.redact = redact
        self.log = logging.getLogger("agproxy")
        self._server: Optional[asyncio.AbstractServer] = None
        self._connections: Dict[asyncio.Task, _Connection] = {}
        self._stopping = False
        self._bodies_held = 0  # bytes of request bodies held, all connections together
        self.streams_active = 0  # streaming answers being written now

    @property
    def connections_active(self) -> int:
        """Client connections open now."""
        return len(self._connections)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> Tuple[str, int]:
        """Bind and start accepting; returns the real host and port."""
        self._server = await asyncio.get_running_loop().create_server(
            self._new_connection, self.config.host, self.config.port, reuse_address=True, backlog=1024)
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    @property
    def in_flight(self) -> int:
        """Requests being answered now."""
        return sum(1 for conn in self._connections.values() if conn.busy)

    def cut_now(self) -> int:
        """End every request in flight at once (streams get an error event); how many there were."""
        self._stopping = True
        busy = [task for task, conn in self._connections.items() if conn.busy]
        for task in busy:
            task.cancel()
        return len(busy)

    async def shutdown(self, grace_s: Optional[float] = None) -> None:
        """Stop accepting, close idle connections, let in-flight requests finish within ``grace_s``
        (``shutdown_grace_s``); a stream still running then ends with an error event and is logged
        as cut."""
        grace_s = self.config.shutdown_grace_s if grace_s is None else grace_s
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task, conn in list(self._connections.items()):
            if not conn.busy:
                task.cancel()
        if self._connections:
            done, pending = await asyncio.wait(list(self._connections), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                self.log.warning("cut %d request(s) still running after %.0f s", len(pending), grace_s)
                await asyncio.wait(pending, timeout=1.0)

    def _new_connection(self) -> _Connection:
        return _Connection(RequestParser(self.config.max_header_bytes, self.config.max_body_bytes), self._on_connection)

    async def _on_connection(self, conn: _Connection) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            if len(self._connections) >= self.config.max_connections or self._stopping:
                busy = AgproxyError(f"agproxy is at its limit of {self.config.max_connections} connections",
                                    status=503, error_type="overloaded_error")
                await self._refuse(conn, busy)
                await self._linger(conn)
                return
            self._connections[task] = conn
            await self._serve(conn)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, OSError) as exc:
            self.log.debug("connection from %s ended: %s", conn.peer, _describe_os_error(exc))
        except Exception:  # the per-connection boundary: log it, close this connection only
            self.log.exception("internal error on connection from %s", conn.peer)
        finally:
            self._connections.pop(task, None)
            self._hold_body(conn, 0)
            conn.transport.close()  # type: ignore[union-attr]

    # -- one connection ----------------------------------------------------------------

    async def _serve(self, conn: _Connection) -> None:
        while not self._stopping:
            try:
                request = await self._read_request(conn)
            except asyncio.CancelledError:
                if self._stopping and not conn.parser.idle:  # cut mid-request by the shutdown: say so
                    await self._refuse(conn, _SHUTTING_DOWN)
                raise
            except AgproxyError as exc:  # malformed HTTP, or a head refused before its body was read
                await self._refuse(conn, exc)
                await self._linger(conn)
                return
            except _Timeout as exc:
                await self._refuse(conn, ProtocolError(str(exc), status=408))
                await self._linger(conn)
                return
            if request is None:
                return
            conn.busy = True
            try:
                keep_alive = await self._answer(conn, request)
            finally:
                conn.busy = conn.responding = False
                self._hold_body(conn, 0)
            if not keep_alive or conn.gone:
                return

    async def _refuse(self, conn: _Connection, exc: AgproxyError) -> None:
        """Answer a request refused before it became one (malformed, refused on its head, timed
        out, cut by the shutdown) and record it like any other: its method and path where its
        head was read, its own request id in the answer and the access line."""
        head = conn.head or conn.parser.last_head
        record = RequestRecord(new_request_id(), conn.client_ip, head.method if head else "-",
                               head.path[:MAX_RECORD_PATH_CHARS] if head else "-")
        record.fail(exc.message)
        try:
            await self._write_response(conn, self.app.error_answer(exc, record), record, False)
        finally:
            record.ended = time.monotonic()
            self.app.finished(record)

    async def _linger(self, conn: _Connection) -> None:
        """Close after an error answer without losing it: half-close, then drain what the client
        still sends (bounded), so the kernel does not reset the connection over unread bytes."""
        try:
            transport = conn.transport
            assert transport is not None
            if transport.can_write_eof() and not transport.is_closing():
                transport.write_eof()
            deadline = asyncio.get_running_loop().time() + _LINGER_S
            drained = 0
            while drained < _LINGER_BYTES:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                data = await conn.read(remaining)
                if not data:
                    break
                drained += len(data)
        except (ConnectionError, OSError):
            pass  # the client is gone or slow; either way we are done with it

    async def _read_request(self, conn: _Connection) -> Optional[Request]:
        """The next complete request, None when the client closed or idled out."""
        config = self.config
        loop = asyncio.get_running_loop()
        deadline: Optional[float] = None
        what = ""
        in_body, conn.admission = False, None
        conn.head = None
        while True:
            event = conn.parser.next_event()
            if isinstance(event, RequestReady):
                self._hold_body(conn, len(event.request.body or b""))
                return event.request
            if in_body:
                self._hold_body(conn, conn.parser.body_bytes)  # what has come of it so far
            if isinstance(event, HeadReady):
                conn.head = event.request
                if event.has_body:
                    conn.admission = self.app.admit(event.request)  # refuse before reading (and buffering) the body
                    self._check_body_fits(event.length)  # (the parser's framing: 0 for a chunked body)
                    in_body = True
                if event.request.expects_continue:
                    conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                deadline, what = loop.time() + config.body_timeout_s, "request body"
                continue
            if event == CLOSED:
                return None
            if deadline is None and not conn.parser.idle:
                deadline, what = loop.time() + config.header_timeout_s, "request headers"
            if deadline is None:
                timeout = config.idle_timeout_s
            else:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    raise _Timeout(f"timed out waiting for the {what}")
            data = await conn.read(timeout)
            if data is None:
                if deadline is None:
                    return None  # idle keep-alive connection: close quietly
                raise _Timeout(f"timed out after {timeout:.0f} s waiting for the {what}")
            conn.parser.feed(data)

    def _hold_body(self, conn: _Connection, size: int) -> None:
        """Count ``size`` bytes as the body that ``conn``'s request holds (0 lets it go); past
        ``max_inflight_body_bytes`` for all connections together, an :class:`AgproxyError` 529,
        so that many large bodies at once cannot take agproxy's memory (each costs a few times
        its size while it is parsed and sent on). A body alone always fits (the limit is at least
        ``max_body_bytes``). A body is held as it arrives, not as its head announces it: uploads
        that announce 32 MiB and send nothing would otherwise hold the whole budget, and lock every
        other body out, until ``body_timeout_s``."""
        more = size - conn.body_held
        if more > 0:
            self._check_body_fits(more, size)
        self._bodies_held += more
        conn.body_held = size

    def _check_body_fits(self, more: int, size: Optional[int] = None) -> None:
        """Refuse (529) ``more`` bytes of body past ``max_inflight_body_bytes``: at the head, a body
        that cannot fit beside what has arrived of the others is refused before it is read."""
        limit = self.config.max_inflight_body_bytes
        if self._bodies_held + more > limit:
            raise AgproxyError(
                f"agproxy already holds {self._bodies_held} bytes of request bodies in flight; this body of "
                f"{more if size is None else size} bytes would pass max_inflight_body_bytes ({limit}): retry shortly",
                status=529, error_type="overloaded_error")

    async def _answer(self, conn: _Connection, request: Request) -> bool:
        """Route one request, write its response and record it; True if the connection stays open."""
        record = RequestRecord(new_request_id(), conn.client_ip, request.method, request.path[:MAX_RECORD_PATH_CHARS])
        exchange = _Exchange(request, conn.on_gone, record, conn.admission)
        # a client that leaves stops retries and waits at once: it cancels this task while the
        # application answers (no task of its own: one more task and turn of the loop per request)
        task = asyncio.current_task()
        assert task is not None
        stop = task.cancel
        conn.on_gone.append(stop)
        conn.watch(request.version)  # a departure from here on is the client leaving
        try:
            try:
                try:
                    response = await self.app.handle(request, exchange)
                finally:
                    conn.on_gone.remove(stop)  # from here on, a departure is seen where the answer is written
            except asyncio.CancelledError:
                if not conn.gone:
                    if self._stopping:  # the shutdown's grace ended before the answer began: say so
                        await self._write_response(conn, error_response(_SHUTTING_DOWN), record, False, request)
                        record.note = "cut by the shutdown"
                    raise
                uncancel = getattr(task, "uncancel", None)  # Python 3.11+: the cancellation was the departure's
                if uncancel is not None:
                    uncancel()
                exchange.client_left()
                return False
            except AgproxyError as exc:
                exc.message = self.redact.text(exc.message)  # an upstream's text may echo a key
                response = self.app.error_answer(exc, record)
                record.fail(exc.message)  # the access line says why
            except Exception:
                self.log.exception("internal error answering %s %s [%s]", request.method, request.path, exchange.id)
                response = error_response(AgproxyError("internal error in agproxy; see its log", status=500))
                record.fail("internal error in agproxy")
            keep_alive = request.keep_alive and not self._stopping
            if conn.gone:
                if isinstance(response, StreamingResponse):
                    response.abort()
                exchange.client_left()
                return False
            if isinstance(response, StreamingResponse) and request.version < (1, 1):
                keep_alive = False  # without chunked encoding the end of the stream is the close
            await self._write_response(conn, response, record, keep_alive, request)
            return keep_alive
        finally:
            conn.unwatch()
            record.ended = time.monotonic()
            self.app.finished(record)

    async def _write_response(self, conn: _Connection, response: Union[Response, StreamingResponse],
                              record: RequestRecord, keep_alive: bool, request: Optional[Request] = None) -> None:
        """Write a response (framed for ``request``'s HTTP version; None: a refusal, closed after it),
        noting its status, the time of its first body bytes and the bytes sent in ``record``."""
        conn.responding = True
        record.status = response.status
        text = self.redact.text
        # agproxy's own headers, then the answer's: an upstream's header may echo a key, in its value or even its name
        headers = [("Date", http_date(time.time())), ("Server", f"agproxy/{__version__}"),
                   ("request-id", record.request_id)]
        headers += [(name, text(value)) for name, value in response.headers if text(name) == name]
        head_only = request is not None and request.method == "HEAD"
        if not keep_alive:
            headers.append(("Connection", "close"))
        elif request is not None and request.version < (1, 1):
            headers.append(("Connection", "keep-alive"))  # HTTP/1.0 closes unless told otherwise
        redact = self.redact.data
        if isinstance(response, Response):
            body = redact(response.body)
            if response.status != 204:  # RFC 9110 8.6: a 204 must not carry Content-Length (nor a body)
                headers.append(("Content-Length", str(len(body))))
            head = response_head(response.status, headers)
            if not head_only:
                record.bytes_sent = len(body)
                record.first_byte = time.monotonic()
            if head_only or not body:
                conn.write(head)
            elif len(body) < _ONE_WRITE_BYTES:
                conn.write(head + body)  # one segment for the usual small answer
            else:
                conn.write(head)
                conn.write(body)
            await conn.drained(self.config.write_timeout_s)
            return
        chunked = request is not None and request.version >= (1, 1)
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        conn.on_gone.append(response.abort)
        self.streams_active += 1
        keep_alive = None
        try:
            conn.write(response_head(response.status, headers))
            del headers  # not held for the whole stream
            await conn.drained(self.config.write_timeout_s)
            if response.ping is not None and response.ping_interval_s is not None:
                keep_alive = _KeepAlive(conn, record, response.ping, response.ping_interval_s, chunked)
            async for chunk in response.chunks:
                if conn.gone:
                    break
                chunk = redact(chunk)
                if not chunk:
                    continue
                if record.first_byte is None:
                    record.first_byte = time.monotonic()
                record.bytes_sent += len(chunk)
                conn.write(encode_chunk(chunk) if chunked else chunk)
                if keep_alive is not None:
                    keep_alive.wrote()
                await conn.drained(self.config.write_timeout_s)
            if keep_alive is not None:
                keep_alive.stop()
            if chunked and not conn.gone:
                conn.write(LAST_CHUNK)
                await conn.drained(self.config.write_timeout_s)
        except (ConnectionError, OSError):
            conn.client_left()
            record.client_left()
            raise
        except asyncio.CancelledError:
            if self._stopping and not conn.gone:
                self._end_cut_stream(conn, record, chunked, response.ending)
            raise
        finally:
            if keep_alive is not None:
                keep_alive.stop()
            self.streams_active -= 1
            response.abort()
            conn.on_gone.remove(response.abort)
            aclose = getattr(response.chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        if conn.gone:
            record.client_left()

    def _end_cut_stream(self, conn: _Connection, record: RequestRecord, chunked: bool,
                        ending: Optional[Callable[[str, str], bytes]]) -> None:
        """A stream the shutdown cuts still ends as a stream: its protocol's error, then the body's end."""
        cut = ending("overloaded_error", "agproxy is shutting down: this stream was cut (shutdown_grace_s)") \
            if ending is not None else b""
        conn.write((encode_chunk(cut) + LAST_CHUNK if cut else LAST_CHUNK) if chunked else cut)
        record.note = "cut by the shutdown"


# =====================================================================================
# 11. The gateway
#    The application the shell serves (Server): the front door's guards and routes, the
#    handlers over one state (account pools, learned rejections, the signature book,
#    counters); one Adapter per upstream kind in ADAPTERS; the relay pipeline every kind's
#    answer goes through.
# =====================================================================================

#: How long a fetched upstream model list is reused for /v1/models.
_MODELS_CACHE_S = 60.0
#: How long /v1/models waits for the upstreams' lists in all: someone is waiting on a model picker, and
#: one hanging upstream (or a hundred, each within its own connect_timeout_s) must not hold it longer.
_MODELS_FETCH_DEADLINE_S = 8.0
#: Pages of an upstream's model list read at most (Gemini pages its list), and models kept of it.
_MAX_MODEL_PAGES = 20
_MAX_LISTED_MODELS = 5000
#: Distinct counter names kept for /v1/agproxy/stats (real traffic makes a few dozen).
MAX_COUNTER_KINDS = 1000


_SSE_HEADERS: Headers = [
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
]


@dataclasses.dataclass(eq=False)
class _Lessons:
    """What one request is trying without, after its upstream's 400s named them."""

    fields: List[str] = dataclasses.field(default_factory=list)
    betas: List[str] = dataclasses.field(default_factory=list)
    heals: int = 0
    #: the completion budget this request is sent with when it is not the client's (a context_window
    #: or the upstream's own count said the client's would not fit), and whether the upstream said so
    max_tokens: Optional[int] = None
    fitted: bool = False


class ModelCatalog:
    """The models ``/v1/models`` advertises: exact names in ``model_map``, then what the upstreams
    list (asked all at once, with a key that is not resting, and kept a minute), else a built-in
    list of Claude models; only models ``model_map`` routes. Concurrent askers share one fetch."""

    def __init__(self, config: Config, client: UpstreamClient, pool: AccountPool,
                 adapter: Callable[[Upstream], Any], clock: Callable[[], float], log: logging.Logger) -> None:
        self.config = config
        self.client = client
        self.pool = pool
        self.adapter = adapter
        self.clock = clock
        self.log = log
        self._cache: Optional[Tuple[float, List[Tuple[str, Dict[str, Any]]]]] = None
        self._fetch: Optional[asyncio.Future] = None

    async def models(self) -> List[Dict[str, Any]]:
        """The models to advertise, as Anthropic model objects."""
        if self._cache is None or self._cache[0] < time.monotonic():
            if self._fetch is None or self._fetch.done():  # one fetch for every client asking
                self._fetch = asyncio.ensure_future(self._fetch_upstream_models())
            await asyncio.shield(self._fetch)
        models: Dict[str, Dict[str, Any]] = {}
        for rule in self.config.model_map:
            if not any(c in rule.match for c in "*?["):
                models.setdefault(rule.match, _model_object(rule.match, rule.match))
        listed = self._cache[1] if self._cache is not None else []
        for upstream, model in listed or [("", _model_object(i, d)) for i, d in KNOWN_CLAUDE_MODELS]:
            if self._routes_to(model["id"], upstream):
                models.setdefault(model["id"], model)
        return list(models.values()) or [_model_object(i, d) for i, d in KNOWN_CLAUDE_MODELS]

    async def _fetch_upstream_models(self) -> None:
        """Ask every upstream for its list at once, and wait for them at most
        ``_MODELS_FETCH_DEADLINE_S``: one upstream that hangs (or many, each within its own timeout)
        must not hold ``/v1/models`` for longer than a client waits. Lists late by then are left out
        of this minute's answer, with a warning."""
        fetches = [asyncio.ensure_future(self._upstream_models(upstream)) for upstream in self.config.upstreams]
        if fetches:
            await asyncio.wait(fetches, timeout=_MODELS_FETCH_DEADLINE_S)
        upstream_models: List[Tuple[str, Dict[str, Any]]] = []
        for upstream, fetch in zip(self.config.upstreams, fetches):
            if fetch.done():
                upstream_models += [(upstream.name, model) for model in fetch.result()]
            else:
                fetch.cancel()
                self.log.warning("could not list the models of upstream %r: no list within %g s",
                                 upstream.name, _MODELS_FETCH_DEADLINE_S)
        self._cache = (time.monotonic() + _MODELS_CACHE_S, upstream_models)  # fresh from its end

    async def visible(self, client: Optional[Client]) -> List[Dict[str, Any]]:
        """The models a client may use, of those advertised (everyone else sees them all)."""
        models = await self.models()
        return models if client is None else [m for m in models if client.may_use(m["id"])]

    async def one(self, model_id: str) -> Dict[str, Any]:
        """One model's object: as listed, else made from its name (any model ``model_map`` routes is served)."""
        return next((m for m in await self.models() if m["id"] == model_id), None) or _model_object(model_id, model_id)

    def _routes_to(self, model: str, upstream: str) -> bool:
        """Whether ``model_map`` routes ``model`` (to ``upstream``, the one that listed it, where
        one did: a name that a catch-all rule sends elsewhere is not what that upstream serves)."""
        try:
            route = route_model(self.config, model)
        except NotFound:
            return False
        return not upstream or any(u.name == upstream for u in route.upstreams)

    async def _upstream_models(self, upstream: Upstream) -> List[Dict[str, Any]]:
        adapter = self.adapter(upstream)
        if adapter.models_path is None:
            return []
        try:
            account = self.pool.rested(upstream, "", self.clock())
            return await list_upstream_models(self.client, adapter, upstream, account)
        except UpstreamFailure as exc:
            self.log.warning("could not list the models of upstream %r: %s", upstream.name, exc.message)
            return []


class Learning:
    """What the gateway learns from its attempts and keeps across requests: what each upstream
    rejects, the context windows servers named, the counters of what was changed, and the notes
    said once. It applies what each attempt leaves (:class:`CallFacts`) and asks for the state to
    be saved when a lesson is new."""

    def __init__(self, config: Config, learned: LearnedRejections, windows: LearnedWindows, metrics: Metrics,
                 save: Callable[[], None]) -> None:
        self.config = config  # a reload gives the new one
        self.learned = learned
        self.windows = windows
        self.metrics = metrics
        self.save = save
        self.counters: collections.Counter = collections.Counter()
        self._noted: collections.OrderedDict = collections.OrderedDict()
        self.log = logging.getLogger("agproxy")

    def apply(self, call: Call) -> None:
        """Apply what an attempt learned and did (:class:`CallFacts`): its lessons, a context window
        the server named, its changes to the counters, its notes."""
        facts, upstream = call.facts, call.upstream
        if facts.window:
            self.learn_window(upstream, call.route.model, facts.window)
        if facts.lessons is not None:
            self.commit_lessons(upstream, facts.lessons)
            facts.lessons = None
        for stage, changes in facts.changes:
            self.count_changes(stage, changes, upstream)
        facts.changes.clear()
        for session, kind, message, args in facts.notes:
            self.note_once(session, kind, message, *args)
        facts.notes.clear()
        if facts.counters:
            self.counters.update(facts.counters)
            facts.counters.clear()

    def commit_lessons(self, upstream: Upstream, trial: _Lessons) -> None:
        """A request succeeded without what it tried without: every later request is sent so."""
        new = self.learned.learn(upstream.name, trial.fields, trial.betas)
        if not new:
            return
        self.counters["healed"] += len(new)
        self.metrics.learned(upstream.name, new)
        self.log.warning("upstream %r rejects %s; agproxy strips %s from its requests from now on",
                         upstream.name, ", ".join(new), "them" if len(new) > 1 else "it")
        self.save()

    def learn_window(self, upstream: Upstream, model: str, window: Optional[int]) -> None:
        """A context window the server named in an error: used for ``model`` from now on when it is
        smaller than the one in effect, said once at WARNING with the setting to fix, and saved."""
        configured = upstream.context_window
        if not self.windows.learn(upstream, model, window):
            return
        self.metrics.learned_window(upstream.name)
        index = next((i for i, u in enumerate(self.config.upstreams) if u.name == upstream.name), 0)
        setting = f"upstreams[{index}].context_window"
        said = f"says {configured}" if configured else "is not set"
        self.log.warning("upstream %r serves %r with a %d-token context window, as its error said, but %s %s: set it "
                         "to %d; until then agproxy fits requests to %d (kept in the state file until the config "
                         "changes)", upstream.name, model, window, setting, said, window, window)
        self.save()

    def count_changes(self, stage: str, changes: Dict[str, int], upstream: Upstream) -> None:
        """Add a request's changes to the counters (and say them in the debug log). Kinds name fields
        a client chose (``field:x``), so past :data:`MAX_COUNTER_KINDS` distinct kinds new ones are
        counted together as ``other``."""
        if changes and self.log.isEnabledFor(logging.DEBUG):
            summary = ", ".join(f"{kind}={n}" for kind, n in sorted(changes.items()))
            self.log.debug("%s for upstream %r: %s", stage, upstream.name, summary)
        if any(kind.startswith(("learned:", "beta:")) for kind in changes):
            self.learned.used(upstream.name, changes)
        for kind, n in changes.items():
            name = f"{stage}:{kind[:80]}"
            if name not in self.counters and len(self.counters) >= MAX_COUNTER_KINDS:
                name = f"{stage}:{kind.partition(':')[0][:40]}:other"
            self.counters[name] += n

    def note_once(self, session: Optional[str], kind: str, message: str, *args: Any) -> None:
        """Log ``message`` once per session and kind, in bounded memory."""
        key = (session or "-", kind)
        if key in self._noted:
            return
        self._noted[key] = None
        while len(self._noted) > MAX_STICKY_SESSIONS:  # one note per session and kind, as many sessions
            self._noted.popitem(last=False)
        self.log.info(message, *args)


class StateSaver:
    """Saves the state file off the event loop (the write fsyncs): one save at a time, and the
    changes made while one runs saved right after it, so that many changes cost one write. What
    is saved is what ``snapshot`` returns when the write begins."""

    def __init__(self, persist: Optional[Callable[[Dict[str, Any]], None]], snapshot: Callable[[], Dict[str, Any]]
                 ) -> None:
        self._persist = persist
        self._snapshot = snapshot
        self._saving: Optional[asyncio.Future] = None
        self._dirty = False

    def save(self) -> None:
        """Save the state soon, off the event loop."""
        if self._persist is None:
            return
        self._dirty = True
        if self._saving is None or self._saving.done():
            self._saving = asyncio.ensure_future(self._write_state())

    async def _write_state(self) -> None:
        loop = asyncio.get_running_loop()
        while self._dirty:
            self._dirty = False
            snapshot = self._snapshot()
            assert self._persist is not None
            await loop.run_in_executor(None, self._persist, snapshot)

    async def finish(self) -> None:
        """Wait for the save under way, if any."""
        if self._saving is not None:
            await self._saving


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who a request's key says sent it: a client (``clients``), agproxy's admin (``admin_api_key``,
    or ``api_key`` where there is none), the holder of ``api_key``, or nobody known (auth off)."""

    client: Optional[Client] = None
    admin: bool = False


def permitted_route(config: Config, caller: Caller, model: str,
                    advice: str = "in Claude Code, --model NAME or ANTHROPIC_MODEL") -> Route:
    """The route of ``model`` (:func:`route_model`) as far as the caller may use it: a client only
    the models and upstreams its entry allows. Anything else is a 403 ``permission_error`` naming
    the model, decided before the model is routed: a client learns nothing of the models, rules or
    upstreams outside its entry (a 404 for an unrouted model would say what exists). ``advice``
    says how the client's agent is told another model (:attr:`Dialect.model_advice`)."""
    client = caller.client
    if client is not None and not client.may_use(model):
        raise PermissionDenied(f"client {client.name!r} may not use model {model[:200]!r} (its models: "
                               f"{', '.join(client.models)[:300]}; ask for one of those: {advice})")
    route = route_model(config, model)
    if client is None or not client.upstreams:
        return route
    upstreams = tuple(u for u in route.upstreams if u.name in client.upstreams)
    if not upstreams:
        raise PermissionDenied(f"client {client.name!r} may not use model {model[:200]!r}: it is served by none of "
                               "the client's upstreams")
    return Route(upstreams, route.model)


#: Paths that stand for every path below them in the routes table (a model's name follows them).
ROUTE_PREFIXES = ("/v1/models/", "/v1beta/models/")


def is_admin_route(path: str) -> bool:
    """agproxy's own routes, which the admin key guards: every ``/v1/agproxy/`` route but ``/me``, and
    ``/metrics``."""
    return path == "/metrics" or (path.startswith("/v1/agproxy/") and path != "/v1/agproxy/me")


#: Host values :class:`FrontDoor` remembers as served (with auth off): the few a machine's clients use.
_MAX_HOSTS_SERVED = 64


class FrontDoor:
    """What a request must pass before a handler runs, checked on its head alone (before its body
    is read): the browser origin, the Host (DNS rebinding), the ``/v1/v1`` mistake, agproxy's key,
    and a route for the path and method; and the answer to a CORS preflight. It reads the config it
    is given (a reload gives it the new one) and the routes table (``/v1/models/`` stands for every
    path below it)."""

    def __init__(self, config: Config, routes: Dict[str, Dict[str, Callable[[Request, _Exchange], Any]]],
                 note: Callable[..., None]) -> None:
        self.config = config
        self.auth_mode = config.effective_auth_mode()
        self.routes = routes
        self.note = note  # says a mistake once: note(session, kind, message, *args)
        #: the Host values (with auth off) found served here: each is looked at once, not at every request
        self._hosts_served: Set[str] = set()

    def reconfigure(self, config: Config) -> None:
        """Check requests against ``config`` from now on."""
        self.config = config
        self.auth_mode = config.effective_auth_mode()
        self._hosts_served = set()

    def admit(self, request: Request) -> Caller:
        """The checks a request's head must pass before its body is read: browser origin, Host,
        the ``/v1/v1`` mistake, the key (who sent it: :class:`Caller`; agproxy's own routes need
        the admin's), and a route for the path and method."""
        path = request.path
        self._check_origin(request)
        self._check_host(request)
        if path.startswith("/v1/v1/") or path == "/v1/v1":
            self.note(None, "v1v1", "a client asked for %s: its base URL ends in /v1; it must not, agproxy "
                                         "adds /v1 itself", path[:100])
            # a 400, not a 404: Claude Code shows a 400's message, but says "There's an issue with the
            # selected model" for any 404
            raise InvalidRequest(
                f"no route for {path}: the base URL must not end in /v1 "
                f"(use ANTHROPIC_BASE_URL=http://{(request.header('host') or '127.0.0.1:8045')[:100]}, "
                "agproxy adds /v1 itself)"
            )
        if request.method == "OPTIONS":
            return Caller()
        required = (self.auth_mode == "strict" or (self.auth_mode == "all_except_health" and path != "/healthz")) \
            and not asks_for_status_page(request)  # the page holds no data; its data needs the key
        caller = self.identify(request, required)
        if required and is_admin_route(path) and not caller.admin:
            whose = f"client {caller.client.name!r}'s" if caller.client else "agproxy's api_key, not its admin_api_key"
            raise PermissionDenied(f"{path[:100]} is one of agproxy's own routes, for its admin_api_key; this key is "
                                   f"{whose}")
        self.handler(request)
        return caller

    def handler(self, request: Request) -> Callable[[Request, _Exchange], Any]:
        """The handler of a request's path and method; 404 or 405 (with ``Allow``) when none."""
        path = request.path
        methods = self.routes.get(path)
        for prefix in ROUTE_PREFIXES:
            if methods is None and path.startswith(prefix) and len(path) > len(prefix):
                methods = self.routes[prefix]
        if methods is None:
            raise NotFound(f"no route for {request.method[:20]} {path[:200]}")
        method = "GET" if request.method == "HEAD" and "GET" in methods else request.method
        handler = methods.get(method)
        if handler is None:
            allowed = ", ".join(sorted(set(methods) | ({"HEAD"} if "GET" in methods else set())))
            raise InvalidRequest(f"method {request.method[:20]} is not allowed on {path} (allowed: {allowed})",
                                 status=405, headers=[("Allow", allowed)])
        return handler

    def _check_origin(self, request: Request) -> None:
        """Web pages the user opens can reach localhost; only listed browser origins get in, and
        agproxy's own (the status page: ``http://`` and the request's Host). That one lets no other site
        in: a DNS-rebinding page is same-origin with its own Host, which ``_check_host`` refuses with
        auth off; with auth on, the request needs the key, which a page of another origin cannot read."""
        origin = request.header("origin")
        if origin is None:
            return  # not a browser's request (what every API client sends)
        allowed = {o.rstrip("/").lower() for o in self.config.allowed_origins}
        allowed.add(f"http://{request.header('host') or ''}".lower())
        if origin.rstrip("/").lower() not in allowed:
            raise PermissionDenied(
                f"requests from browser origin {origin[:100]!r} are refused; add it to allowed_origins to permit it"
            )

    def _check_host(self, request: Request) -> None:
        """With auth off, a foreign ``Host`` means DNS rebinding: only loopback or configured names."""
        if self.auth_mode != "off":
            return
        host_header = request.header("host")
        if host_header is None or host_header in self._hosts_served:
            return  # (HTTP/1.0 without Host: no browser sends that)
        host = host_without_port(host_header).lower().rstrip(".")
        if is_loopback_host(host) or host in {n.lower() for n in self.config.server_names} \
                or host == self.config.host.lower():
            if len(self._hosts_served) < _MAX_HOSTS_SERVED:  # a client may send any Host: a bounded set
                self._hosts_served.add(host_header)
            return
        raise AgproxyError(
            f"Host {host_header[:100]!r} is not served here; add it to server_names (or turn auth on) to permit it",
            status=421, error_type="permission_error",
        )

    def identify(self, request: Request, required: bool) -> Caller:
        """Who sent the request, by its key: every key agproxy knows is compared in constant time
        (a client's by its SHA-256). With ``required`` (auth on), no key or an unknown one is a 401;
        else the request is anonymous."""
        config = self.config
        if required and not config.api_key and not config.clients:
            raise AuthenticationFailed("agproxy has auth on but no api_key (nor clients) configured; set api_key in "
                                       "its config")
        keys = presented_keys(request)
        if not keys:
            if required:
                whose = "your own key (a client's, from whoever runs agproxy) or agproxy's api_key" \
                    if config.clients else "agproxy's api_key"
                raise AuthenticationFailed(f"missing API key: send {whose} {dialect_of_path(request.path).key_advice}")
            return Caller()
        admin_key = config.admin_api_key or config.api_key
        admin = key_matches(admin_key, keys)
        known = admin or key_matches(config.api_key, keys)
        digests = [key_sha256(key).encode() for key in keys]
        matched = [candidate for candidate in config.clients  # every one compared: the time says not which
                   if sum(hmac.compare_digest(candidate.key_sha256.encode(), digest) for digest in digests)]
        if len(matched) > 1:  # whose models, limits and usage would it be?
            raise AuthenticationFailed(f"the request carries the keys of {len(matched)} clients "
                                       f"({', '.join(repr(c.name) for c in matched)}); send one")
        client = matched[0] if matched else None
        if client is None and not known:
            if required:
                raise AuthenticationFailed("invalid API key for agproxy: it is neither agproxy's api_key nor a "
                                           "client's (a client removed from the config is refused too; an upstream's "
                                           "key is not agproxy's)")
            return Caller()
        return Caller(client, admin)

    def preflight(self, request: Request) -> Response:
        """CORS preflight for an allowed origin (the origin check has already run)."""
        headers: Headers = [("Allow", "GET, HEAD, POST, OPTIONS")]
        origin = request.header("origin")
        if origin:
            headers += [
                ("Access-Control-Allow-Origin", origin),
                ("Access-Control-Allow-Methods", "GET, HEAD, POST, OPTIONS"),
                ("Access-Control-Allow-Headers", request.header("access-control-request-headers") or "*"),
                ("Access-Control-Max-Age", "600"),
                ("Vary", "Origin"),
            ]
        return Response(204, headers)


class Server(Application):
    """The gateway: the front door (guards, routes) and the handlers over one state (account
    pools, learned rejections, signature book, counters), served by an :class:`HttpServer`."""

    def __init__(self, config: Config, client: Optional[UpstreamClient] = None, state: Optional[Dict[str, Any]] = None,
                 persist: Optional[Callable[[Dict[str, Any]], None]] = None, *,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], Any] = asyncio.sleep,
                 load: Optional[Callable[[], Config]] = None, redactor: Optional[Redactor] = None) -> None:
        self.config = config
        #: reads the config file again (``load_config`` with the command line's overrides), for a reload
        self.load = load
        #: wall-clock time and the wait between attempts: what account rests and resets are measured
        #: with (a test passes its own, so waits and rests pass without sleeping)
        self.clock = clock
        self.sleep = sleep
        self._servers = {u.name: server_fingerprint(u) for u in config.upstreams}
        self.learned = LearnedRejections()
        self.learned.load_json((state or {}).get("learned"), self._servers)
        self.windows = LearnedWindows()
        self.signatures = SignatureBook()
        self.call_signatures = CallSignatures()
        # the log's redactor where there is one, so that a reload's new keys are hidden there too
        self.redact = redactor if redactor is not None else Redactor()
        self.redact.add(config.secrets(dict(os.environ)))  # the proxy the client uses is os.environ's
        self.client = client or UpstreamClient()
        self.pool = AccountPool(config.upstreams)
        self.pool.hide = self.redact.text
        self.log = logging.getLogger("agproxy")
        self.access_log = logging.getLogger("agproxy.access")
        #: what reads each request's record once its answer has ended (:meth:`finished`)
        self.record_readers: List[Callable[[RequestRecord], None]] = []
        self.metrics = Metrics(lambda text: self.redact.text(text))
        self.record_readers.append(self.metrics.read)
        self.saver = StateSaver(persist, self._snapshot)
        self.learning = Learning(config, self.learned, self.windows, self.metrics, self.saver.save)
        self.counters = self.learning.counters
        self.note_once = self.learning.note_once
        self.usage = UsageLedger(lambda text: self.redact.text(text))
        self.usage.load_json((state or {}).get("usage"), clock())
        self.usage_counter = UsageCounter(self.usage, clock, self.saver.save if persist else None)
        self.record_readers.append(self.usage_counter.read)
        self.limits = ClientLimits(config.clients, clock, self.metrics.client_limited,
                                   (state or {}).get("client_limits"))
        self.record_readers.append(self.limits.read)
        for line in self.pool.load_json((state or {}).get("accounts"), clock()):
            self.log.info("restored from the state file: %s (stop agproxy and run `agproxy state clear` to forget it)",
                          line)
        for line in self.windows.load_json((state or {}).get("windows"), config.upstreams):
            self.log.info("restored from the state file: %s, as it said in an error (set its context_window to that)",
                          line)
        self.http = HttpServer(config, self, self.redact)
        shared = AdapterState(self.client, self.redact, clock, self.learned, self.windows, self.signatures,
                              self.call_signatures)
        self.adapters: Dict[str, Adapter] = {kind: cls(shared) for kind, cls in ADAPTERS.items()}
        self.catalog = ModelCatalog(config, self.client, self.pool, self.adapter, clock, self.log)
        self._routes: Dict[str, Dict[str, Callable[[Request, _Exchange], Any]]] = {
            "/": {"GET": self._root},
            "/api/hello": {"GET": self._root},  # Claude Code 2.1.332 and later probe HEAD /api/hello
            "/healthz": {"GET": self._healthz},
            "/v1/messages": {"POST": self._messages},
            "/v1/messages/count_tokens": {"POST": self._count_tokens},
            "/v1/chat/completions": {"POST": self._chat_completions},
            "/v1/responses": {"POST": self._responses},
            "/v1beta/models": {"GET": self._gemini_models},
            "/v1/models": {"GET": self._models},
            "/v1/models/claude": {"GET": self._models_openai},
            "/v1/api/event_logging": {"POST": self._telemetry},
            "/v1/api/event_logging/batch": {"POST": self._telemetry},
            "/v1/agproxy/accounts": {"GET": self._accounts},
            "/v1/agproxy/stats": {"GET": self._stats},
            "/v1/agproxy/usage": {"GET": self._usage},
            "/metrics": {"GET": self._metrics},
            "/agproxy": {"GET": self._status_page},
            STATUS_DATA_PATH: {"GET": self._status},
            "/v1/agproxy/reload": {"POST": self._reload},
            "/v1/agproxy/me": {"GET": self._me},
        }
        self.board = StatusBoard(clock(), self.usage, self.redact.text)
        self.record_readers.append(self.board.read)
        self.door = FrontDoor(config, dict(self._routes, **{"/v1/models/": {"GET": self._model,
                                                                             "POST": self._gemini_model},
                                                             "/v1beta/models/": {"GET": self._gemini_model,
                                                                                 "POST": self._gemini_model}}),
                              self.note_once)
        self.watcher: Optional[ConfigWatcher] = None

    def adapter(self, upstream: Upstream) -> Adapter:
        """The adapter of an upstream's kind (the kinds are validated at load time)."""
        return self.adapters[upstream.kind]

    def error_answer(self, exc: AgproxyError, record: RequestRecord) -> Response:
        """The error answer, with the model sent and the account used where the request got that far
        (read from its record: nothing is written onto the error after it was raised)."""
        dialect = dialect_of_path(record.path)
        response = error_response(exc, dialect.error_body(exc), dialect.error_status(exc))
        if record.mapped_model:
            response.headers.append(("X-Mapped-Model", record.mapped_model))
        if record.account and record.account != "warmup":
            response.headers.append(("X-Account-Email", record.account))
        return response

    def finished(self, record: RequestRecord) -> None:
        """A request's answer has ended: its access line (at DEBUG for a poll of agproxy's own
        that went well: an open status page and a scraper would fill the log), then each of
        ``record_readers`` (metrics, the ledger, the status page's last requests) reads its record."""
        level = logging.DEBUG if record.route in QUIET_ROUTES and record.status < 400 else logging.INFO
        if self.access_log.isEnabledFor(level):  # a poll's line is not built only to be dropped
            self.access_log.log(level, "%s", record.line(), extra={"access": record.fields()})
        for read in self.record_readers:
            try:
                read(record)
            except Exception:  # one reader's defect must not lose the others' facts, nor the answer
                self.log.exception("reading the record of %s failed", record.request_id)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> Tuple[str, int]:
        """Bind and start accepting (and watch the config file, with ``watch_config``); returns the
        real host and port."""
        address = await self.http.start()
        self.watcher = ConfigWatcher(self.config.source, self.reload_file)
        self.watcher.follow(self.config.watch_config)
        return address

    def reload(self, config: Config) -> List[str]:
        """Run on ``config`` from now on, and return what changed (:func:`config_changes`): every
        copy of the config is replaced (the front door's, the shell's limits, the redactor's keys,
        the pool, the catalog, what lessons and windows hold for). Accounts whose key and server
        did not change keep their state; requests in flight finish on the config they began with
        (each holds the pool it began with). The listening address stays until a restart."""
        before = self.config
        changes = config_changes(before, config)
        config = dataclasses.replace(config, **{name: getattr(before, name) for name in RESTART_SETTINGS})
        logging.getLogger("agproxy").setLevel(config.log_level.upper())
        self.redact.add(config.secrets(dict(os.environ)))
        servers = {u.name: server_fingerprint(u) for u in config.upstreams}
        self.learned.rebind(self._servers, servers)
        self.windows.rebind(before.upstreams, config.upstreams)
        self._servers = servers
        self.pool = self.pool.reconfigured(config.upstreams)
        self.config = self.http.config = self.learning.config = config
        self.door.reconfigure(config)
        self.limits.reconfigure(config.clients)
        self.catalog = ModelCatalog(config, self.client, self.pool, self.adapter, self.clock, self.log)
        if self.watcher is not None:
            self.watcher.follow(config.watch_config, config.source)
        self.saver.save()
        return changes

    def reload_file(self, why: str) -> List[str]:
        """Read the config file again and run on it (:meth:`reload`), logging what changed; a config
        that does not load is refused with its one-line message (:class:`ConfigError`), and the
        running one stays."""
        if self.load is None:
            raise ConfigError("this agproxy was not started from the command line: it has no config file to reload")
        try:
            config = self.load()
        except ConfigError as exc:
            self.log.error("%s: the config was not reloaded, agproxy keeps running on the one it has: config: %s",
                           why, exc.message)
            raise
        changes = self.reload(config)
        self.log.info("%s: config reloaded from %s: %s", why, config.source, "; ".join(changes) or "no change")
        return changes

    async def shutdown(self, grace_s: Optional[float] = None) -> None:
        """Stop accepting, let in-flight requests finish within ``grace_s`` (``shutdown_grace_s``),
        save the state."""
        if self.watcher is not None:
            self.watcher.follow(False)
        await self.http.shutdown(grace_s)
        self.usage_counter.flush()  # the usage of the last seconds, not saved yet
        await self.saver.finish()
        self.client.shutdown()

    def _snapshot(self) -> Dict[str, Any]:
        """What the state file keeps."""
        return {"learned": self.learned.to_json(self._servers), "accounts": self.pool.to_json(self.clock()),
                "windows": self.windows.to_json(self.config.upstreams), "usage": self.usage.to_json(),
                "client_limits": self.limits.to_json(),
                "pid": os.getpid()}  # `agproxy state clear` leaves the file of a running agproxy alone

    def admit(self, request: Request) -> Caller:
        """The front door's checks of a request's head (:class:`FrontDoor`): who sent it."""
        return self.door.admit(request)

    async def handle(self, request: Request, exchange: _Exchange) -> Union[Response, StreamingResponse]:
        """Admit the request (unless its head was) and run its handler."""
        if exchange.admission is None:
            exchange.admission = self.admit(request)
        caller: Caller = exchange.admission
        if caller.client is not None:
            exchange.record.client = caller.client.name
        if request.method == "OPTIONS":
            return self.door.preflight(request)
        handler = self.door.handler(request)
        exchange.record.route = handler.__name__.lstrip("_")
        response = await handler(request, exchange)
        origin = request.header("origin")
        if origin:
            response.headers.append(("Access-Control-Allow-Origin", origin))
            response.headers.append(("Vary", "Origin"))
        return response

    # -- handlers ------------------------------------------------------------------------

    async def _root(self, request: Request, exchange: _Exchange) -> Response:
        if asks_for_status_page(request):  # a browser; Claude Code's probes get the JSON
            return await self._status_page(request, exchange)
        return json_response(200, {"name": "agproxy", "version": __version__, "status": "ok"})

    async def _healthz(self, request: Request, exchange: _Exchange) -> Response:
        return json_response(200, {"status": "ok", "version": __version__})

    async def _telemetry(self, request: Request, exchange: _Exchange) -> Response:
        return Response(200, [("Content-Type", "application/json")], b"")

    async def _models(self, request: Request, exchange: _Exchange) -> Response:
        """Anthropic's list for an Anthropic client (it sends ``anthropic-version``), Gemini's for a
        Gemini client (its key in ``x-goog-api-key``), else Anthropic's and OpenAI's in one."""
        if request.header("x-goog-api-key") is not None and request.header("anthropic-version") is None:
            return await self._gemini_models(request, exchange)
        shape = "anthropic" if request.header("anthropic-version") is not None else "both"
        return json_response(200, models_list(await self.catalog.visible(exchange.admission.client), shape))

    async def _models_openai(self, request: Request, exchange: _Exchange) -> Response:
        return json_response(200, models_list(await self.catalog.visible(exchange.admission.client), "openai"))

    async def _model(self, request: Request, exchange: _Exchange) -> Response:
        model_id = urllib.parse.unquote(request.path[len("/v1/models/"):])
        permitted_route(self.config, exchange.admission, model_id)
        return json_response(200, await self.catalog.one(model_id))

    async def _chat_completions(self, request: Request, exchange: _Exchange) -> Union[Response, StreamingResponse]:
        return await self._generate(request, exchange, DIALECTS["chat"])

    async def _responses(self, request: Request, exchange: _Exchange) -> Union[Response, StreamingResponse]:
        return await self._generate(request, exchange, DIALECTS["responses"])

    async def _gemini_models(self, request: Request, exchange: _Exchange) -> Response:
        """``GET /v1beta/models``: the models the caller may use, in Gemini's shape."""
        return json_response(200, DIALECTS["gemini"].model_list(await self.catalog.visible(exchange.admission.client)))

    async def _gemini_model(self, request: Request, exchange: _Exchange) -> Union[Response, StreamingResponse]:
        """``/v1beta/models/{model}:generateContent``, ``:streamGenerateContent`` and
        ``:countTokens`` (POST; under ``/v1/models/`` too, as the google-genai SDK may send them),
        and one model (GET)."""
        name, _, method = urllib.parse.unquote(request.path.split("/models/", 1)[1]).partition(":")
        if request.method in ("GET", "HEAD") and not method:
            permitted_route(self.config, exchange.admission, name, DIALECTS["gemini"].model_advice)
            return json_response(200, DIALECTS["gemini"].model_list([await self.catalog.one(name)])["models"][0])
        if request.method != "POST" or method not in GEMINI_METHODS:
            raise NotFound(f"no route for {request.method[:20]} {request.path[:200]} (Gemini's methods here: "
                           f"{', '.join(GEMINI_METHODS)})")
        if method == "countTokens":
            return await self._count_tokens(request, exchange, DIALECTS["gemini"], name)
        return await self._generate(request, exchange, DIALECTS["gemini"], name)

    async def _json_body(self, request: Request) -> Dict[str, Any]:
        """The request's JSON body, parsed; after a big one's parse the loop runs other clients' events
        before its validation and preparation, so that they wait for one slice, not for all of it."""
        if not is_json_content_type(request.header("content-type")):
            raise InvalidRequest(
                f"Content-Type must be application/json, got {request.header('content-type') or 'none'!r}",
                status=415,
            )
        request.body_spans = {} if len(request.body or b"") > _SPLICED_BODY_BYTES else None
        body = parse_json_body(request.body or b"", request.body_spans)
        if len(request.body or b"") > _YIELD_AFTER_PARSE_BYTES:
            await asyncio.sleep(0)
        return body

    async def _messages(self, request: Request, exchange: _Exchange) -> Union[Response, StreamingResponse]:
        return await self._generate(request, exchange, DIALECTS["anthropic"])

    async def _generate(self, request: Request, exchange: _Exchange, dialect: Dialect,
                        model: Optional[str] = None) -> Union[Response, StreamingResponse]:
        """A request that generates, in any client protocol: its dialect turns it into the internal
        form (``model``: where the path names it), and everything after is the same for all:
        validation, the client's models and limits, warmups, the attempts over the account pool,
        and the answer in the client's shape."""
        asked = await self._json_body(request)
        record = exchange.record
        record.model = str(model if model is not None else asked.get("model"))[:200]
        inbound = dialect.inbound(request, asked, model)
        body = inbound.body
        record.stream = inbound.stream
        validate_messages_request(body)
        if body is not asked:
            mark_cache_breakpoints(body)
        raw = internal_bytes(request, asked, body)
        pool = self.pool  # what the request began with, whatever a reload brings meanwhile
        route = permitted_route(self.config, exchange.admission, body["model"], dialect.model_advice)
        self.learning.count_changes(dialect.name, inbound.changes, route.upstream)
        warmup = dialect.answers_warmups and self.config.warmup_interception and is_warmup(body)
        if not warmup:  # answered locally, a warmup costs nothing against the client's limits
            await self._within_limits(exchange, body, raw)
        record.mapped_model, record.upstream = route.model, route.upstream.name
        if warmup:
            self.counters["warmup_intercepted"] += 1
            return dialect.whole(warmup_answer(body, record, [("X-Mapped-Model", route.model)]), inbound)

        async def attempt(upstream: Upstream, account: Account) -> Union[WholeAnswer, StreamingResponse]:
            call = self._call(raw, request, exchange, body, Route((upstream,), route.model), account)
            native = dialect.native(asked, inbound) if upstream.kind == dialect.native_kind else None
            if native is not None:
                call.native, call.native_usage_chunk = native
            record.passthrough = native is not None
            try:
                answer = await self.adapter(upstream).messages(call)
            except AgproxyError as exc:
                raise AttemptError(exc, _outcome_of(exc)) from None
            finally:
                self.learning.apply(call)
            if self.adapter(upstream).answers_locally:
                record.local = upstream.kind
            if not isinstance(answer, AnswerStream):
                record.add_usage(call.facts.usage)
                return answer  # the attempt answered: a structured-output check after it is no retry's

            encoder = dialect.encoder(inbound) if native is None else dialect.native_encoder(inbound)
            if native is None and dialect.checks_structured_output and output_schema(body) is not None:
                encoder = UnfencedStream(encoder)  # fenced JSON streams without its fence
            return self._relay(answer, call, record, pool, encoder, dialect.stream_headers(inbound))

        answered = await run_attempts(pool, route, session_id(request.headers, body), self.config.max_retry_attempts,
                                      attempt, clock=self.clock, sleep=self.sleep, on_change=self.saver.save,
                                      on_attempt=attempt_logger(self.log, exchange.record, route.model))
        if not isinstance(answered, WholeAnswer):
            return answered
        if dialect.checks_structured_output and output_schema(body) is not None:
            message = check_structured(answered.message, record.upstream)
            if message is not answered.message:  # its fence taken off: its events (and the upstream's
                # own JSON, where it passed through) are not what it says
                answered = dataclasses.replace(answered, message=message, events=None, native_json=None)
        return dialect.whole(answered, inbound)

    async def _within_limits(self, exchange: _Exchange, body: Dict[str, Any], raw: bytes) -> None:
        """A client's request that generates passes its limits (:class:`ClientLimits`) once it is
        valid and permitted, and before any upstream is called: a request refused for anything
        else uses none of its client's minute or budget. Under a day budget it holds what it may
        cost: its input's estimate and its ``max_tokens``."""
        client = exchange.admission.client
        if client is None:
            return
        estimate = await _estimate_tokens(body, len(raw)) if client.tokens_per_day else 0
        most = body.get("max_tokens") if _is_int(body.get("max_tokens")) else 0
        await self.limits.admit(client, exchange.id, estimate + max(0, min(most, MAX_UPSTREAM_TOKENS)), estimate)

    def _call(self, raw: bytes, request: Request, exchange: _Exchange, body: Dict[str, Any], route: Route,
              account: Account) -> Call:
        """What one attempt on ``route`` with ``account`` needs (``body`` in the internal form, and
        ``raw``, its bytes); the record names them from now on."""
        exchange.record.upstream, exchange.record.account = route.upstream.name, account.name
        return Call(body, raw, request.headers, route, account,
                    [("X-Mapped-Model", route.model), ("X-Account-Email", account.name)], exchange.on_client_gone,
                    self.config.force_stream_internally, self.config.ping_interval_s,
                    raw_spans=request.body_spans if raw is request.body else None)

    def _relay(self, answer: AnswerStream, call: Call, record: RequestRecord, pool: AccountPool,
               encoder: StreamEncoder, stream_headers: Headers) -> StreamingResponse:
        """The client's streaming response for an attempt's answer stream, written by the client's
        ``encoder``: the account's slot (in the pool the request began with) stays taken, and the
        record takes the answer's usage, until the relay ends."""
        release = pool.hold(call.upstream, call.account)
        response = answer.response

        def ended() -> None:
            release()
            call.facts.cut_output()
            record.add_usage(call.facts.usage)

        def abort() -> None:
            response.abandon()
            release()

        return StreamingResponse(200, stream_headers + answer.headers, answer.relay(encoder, ended, record.fail), abort,
                                 encoder.error, encoder.ping, answer.ping_interval_s)


    async def _count_tokens(self, request: Request, exchange: _Exchange, dialect: Optional[Dialect] = None,
                            model: Optional[str] = None) -> Response:
        """A token count of a request in any client protocol that has one (its dialect turns the
        request into the internal form, and the count into its answer)."""
        dialect = dialect or DIALECTS["anthropic"]
        asked = await self._json_body(request)
        record = exchange.record
        record.model = str(model if model is not None else asked.get("model"))[:200]
        body = dialect.inbound(request, asked, model).body
        validate_messages_request(body, count_tokens=True)
        raw = internal_bytes(request, asked, body)
        pool = self.pool  # what the request began with, whatever a reload brings meanwhile
        route = permitted_route(self.config, exchange.admission, body["model"], dialect.model_advice)
        record.mapped_model, record.upstream = route.model, route.upstream.name
        headers: Headers = [("X-Mapped-Model", route.model)]
        window = self.windows.window(route.upstream, route.model)
        client_window = client_context_window(request.headers, body.get("model"))
        if not self.adapter(route.upstream).counts_upstream:
            account = pool.rested(route.upstream, route.model, self.clock())
            counted = await self.adapter(route.upstream).count(body, route, account)
            tokens = counted if counted is not None else await _estimate_tokens(body, len(raw))
            if window:
                tokens = scale_tokens(tokens, window, client_window)
            how = "upstream-tokenizer" if counted is not None else "estimate"
            return json_response(200, dialect.count_json({"input_tokens": tokens}), headers + [("X-Token-Count", how)])
        pooled = Route(tuple(u for u in route.upstreams if self.adapter(u).counts_upstream), route.model)

        async def attempt(upstream: Upstream, account: Account) -> Response:
            call = self._call(raw, request, exchange, body, Route((upstream,), route.model), account)
            try:
                counted = await self.adapter(upstream).count_by_account(call)
            except AgproxyError as exc:
                if exc.status == 429:  # counting has a rate limit of its own: it says nothing of the account's
                    # messages (resting the account would lock everyone out for a flood of counts), and an
                    # estimate serves the client as well
                    tokens = await _estimate_tokens(body, len(raw))
                    return json_response(200, dialect.count_json({"input_tokens": tokens}),
                                         headers + [("X-Token-Count", "estimate")])
                raise AttemptError(exc, _outcome_of(exc)) from None
            finally:
                self.learning.apply(call)
            upstream_window = self.windows.window(upstream, route.model)
            if upstream_window:
                scale_usage(counted, upstream_window, client_window)
            return json_response(200, dialect.count_json(counted), headers + [("X-Account-Email", account.name)])

        return await run_attempts(pool, pooled, session_id(request.headers, body), self.config.max_retry_attempts,
                                  attempt, clock=self.clock, sleep=self.sleep, on_change=self.saver.save,
                                  on_attempt=attempt_logger(self.log, exchange.record, route.model))


    async def _status_page(self, request: Request, exchange: _Exchange) -> Response:
        return Response(200, list(STATUS_PAGE_HEADERS), STATUS_PAGE_HTML.encode())

    async def _status(self, request: Request, exchange: _Exchange) -> Response:
        """The status page's data (the request asking for it is not counted in flight)."""
        status = self.board.snapshot(self.clock(), self.http.in_flight - 1, self.config.upstreams, self.pool,
                                     self.learned, self.windows, self.counters)
        return json_response(200, status, [("Cache-Control", "no-store")])

    async def _me(self, request: Request, exchange: _Exchange) -> Response:
        """A client's own entry: its models, upstreams, limits, and its usage today (UTC)."""
        client = exchange.admission.client
        if client is None:
            raise PermissionDenied("GET /v1/agproxy/me answers for a client's key (see clients in agproxy's config); "
                                   "this request carries none")
        return json_response(200, {"client": client.name, "models": list(client.models),
                                   "upstreams": list(client.upstreams) or [u.name for u in self.config.upstreams],
                                   "limits": client.limits(), "limits_now": self.limits.state(client),
                                   "usage": {"today": self.usage.client_day(client.name, _utc_day(self.clock()))}})

    async def _reload(self, request: Request, exchange: _Exchange) -> Response:
        """``POST /v1/agproxy/reload`` (an empty body): read the config file again, as SIGHUP does."""
        if request.body:
            raise InvalidRequest("send an empty body: agproxy reads its config file again")
        try:
            changes = self.reload_file("POST /v1/agproxy/reload")
        except ConfigError as exc:
            raise InvalidRequest(f"config: {exc.message} (the running config stays)") from None
        return json_response(200, {"reloaded": True, "changes": changes})

    async def _accounts(self, request: Request, exchange: _Exchange) -> Response:
        return json_response(200, {"accounts": self.pool.describe(self.clock())})

    async def _usage(self, request: Request, exchange: _Exchange) -> Response:
        """The usage ledger, as JSON or CSV (:meth:`UsageLedger.answer`)."""
        return self.usage.answer(request.query, self.clock())

    async def _stats(self, request: Request, exchange: _Exchange) -> Response:
        """What agproxy changed and saved, counted per kind since it started."""
        return json_response(200, {"version": __version__, "counters": dict(sorted(self.counters.items())),
                                   "learned": self.learned.to_json()})

    async def _metrics(self, request: Request, exchange: _Exchange) -> Response:
        """The Prometheus page (:class:`Metrics`)."""
        page = self.metrics.page(self.pool, self.clock(), self.http.streams_active, self.http.connections_active,
                                 self.counters)
        return Response(200, [("Content-Type", METRICS_CONTENT_TYPE)], page)


def internal_bytes(request: Request, asked: Dict[str, Any], body: Dict[str, Any]) -> bytes:
    """The bytes of a request in the internal form: the client's own where its dialect kept its
    body (Anthropic's: sent on byte for byte where nothing needs cleaning), else the body's JSON."""
    return (request.body or b"") if body is asked else _UTF8_JSON.encode(body).encode("utf-8")


def warmup_answer(body: Dict[str, Any], record: RequestRecord, headers: Headers) -> WholeAnswer:
    """agproxy's own answer to a Claude Code warmup (:func:`is_warmup`); the record says it was
    answered locally."""
    record.local = "warmup"
    message = warmup_message(body["model"])
    record.add_usage(message.get("usage"))
    return WholeAnswer(message, headers + [("X-Warmup-Intercepted", "true")])


def attempt_logger(log: logging.Logger, record: RequestRecord, model: str
                   ) -> Callable[[int, Upstream, Account, Decision, int], None]:
    """What :func:`run_attempts` calls after each attempt of a request: the attempt goes into the
    request's record, and into the log (at debug when it answered; at WARNING when the config has
    something to fix: a rejected key, a refused model, an upstream's 404)."""
    def logged(number: int, upstream: Upstream, account: Account, decision: Decision, status: int) -> None:
        status = int(status or 0)
        record.attempts.append(AttemptRecord(upstream.name, account.name, status, attempt_outcome(status, decision),
                                             decision.reason))
        if decision.reason == "ok":
            log.debug("%s attempt %d: %s/%s answered", record.request_id, number, upstream.name, account.name)
            return
        then = "giving up" if not decision.retry else (
            f"retrying {'the same account' if decision.same_account else 'on a free account, if any'}"
            f"{f' in {decision.wait_s:.1f} s' if decision.wait_s else ''}")
        rest = f"; account rests {decision.cooldown_s:.0f} s" + ("" if decision.rejected_key else
                                                                 f" for {model}") if decision.cooldown_s else ""
        level = logging.WARNING if decision.rejected_key or decision.model_refused or status == 404 else logging.INFO
        log.log(level, "%s attempt %d: %s/%s status %s: %s%s; %s", record.request_id, number, upstream.name,
                account.name, status or "-", decision.reason, rest, then)
    return logged




async def list_upstream_models(client: UpstreamClient, adapter: Any, upstream: Upstream, account: Account,
                               first: Optional[bytes] = None) -> List[Dict[str, Any]]:
    """An upstream's whole model list (every page of it; ``first`` is its first page where it was
    read already) as Anthropic model objects; :class:`UpstreamFailure` when it has none to give."""
    models: List[Dict[str, Any]] = []
    path, body = adapter.models_path, first
    for _ in range(_MAX_MODEL_PAGES):
        status = 200
        if body is None:
            status, body = await client.fetch("GET", upstream_url(upstream.base_url, path),
                                              adapter.probe_headers(upstream, account),
                                              deadline_s=upstream.connect_timeout_s, limit=MAX_UPSTREAM_BODY_BYTES)
        try:
            page = adapter.listed_models(loads_strict(body)) if status == 200 else None
        except (ValueError, UnicodeDecodeError):
            page = None
        if page is None:
            raise UpstreamFailure(f"it answered HTTP {status} to {path} with no model list")
        models += page[0]
        if not page[1] or len(models) >= _MAX_LISTED_MODELS:
            break
        path, body = f"{adapter.models_path}&pageToken={urllib.parse.quote(page[1], safe='')}", None
    return models[:_MAX_LISTED_MODELS]


# -- one dialect per client protocol ------------------------------------------------------------------




@dataclasses.dataclass(eq=False)
class WholeAnswer:
    """An attempt's answer that came whole (or was assembled, or made locally): the Message, the
    headers for the client, and the events to send it as to a client that asked for a stream
    (None: :func:`message_events`)."""

    message: Dict[str, Any]
    headers: Headers
    events: Optional[List[Event]] = None
    #: the upstream's own JSON answer, for a client of its protocol (a same-protocol passthrough)
    native_json: Optional[bytes] = None


@dataclasses.dataclass(eq=False)
class Inbound:
    """A client's request in the internal form: the Anthropic Messages body, whether the client
    wants a stream, and what its dialect keeps of the request to answer in the client's shape."""

    body: Dict[str, Any]
    stream: bool
    context: Any = None
    #: what the dialect changed or dropped, by kind (counted as the sanitizer's changes are)
    changes: Dict[str, int] = dataclasses.field(default_factory=dict)


class Dialect:
    """A client protocol behind one interface (issue 21), mirroring :class:`Adapter`: its request
    in the internal form (:meth:`inbound`), the internal answer as its JSON or stream, and
    agproxy's errors in its shape. Everything between (routing, client keys and limits, accounts,
    retries, the record) is the same for every dialect. This one is Anthropic Messages, which
    needs no translation."""

    name = "anthropic"
    #: whether Claude Code's warmups come this way (agproxy answers them itself)
    answers_warmups = True
    #: whether a whole answer to a request with a JSON schema must be JSON (:func:`check_structured`):
    #: where the dialect put the schema there, agproxy answers for it; Anthropic's is the upstream's
    checks_structured_output = False
    #: how this protocol's agent is told to ask for another model, and to send its key
    model_advice = "in Claude Code, --model NAME or ANTHROPIC_MODEL"
    key_advice = "as x-api-key or Authorization: Bearer"
    #: the upstream kind that speaks this protocol: a request to it passes through untranslated
    #: (:meth:`native`), its answer too (:class:`NativeStreamEncoder`). Anthropic's own is the
    #: adapter's: its requests are the internal form already.
    native_kind: Optional[str] = None

    def inbound(self, request: Request, body: Dict[str, Any], model: Optional[str]) -> Inbound:
        """The client's request (its JSON ``body``; ``model`` where the path names it) in the
        internal form, or :class:`InvalidRequest` for what the internal form cannot carry."""
        return Inbound(body, body.get("stream") is True)

    def native(self, body: Dict[str, Any], inbound: Inbound) -> Optional[Tuple[Dict[str, Any], bool]]:
        """The client's own request (``body``) to pass to an upstream of :attr:`native_kind`, and
        whether the client gets the stream's usage chunk; None where it must be translated."""
        return None

    def native_encoder(self, inbound: Inbound) -> StreamEncoder:
        """What writes a passthrough answer's own chunks as this client's stream."""
        raise NotImplementedError

    def encoder(self, inbound: Inbound) -> StreamEncoder:
        """What writes one answer's events as this client's stream."""
        return ANTHROPIC_ENCODER

    def stream_headers(self, inbound: Inbound) -> Headers:
        """The headers of this client's stream."""
        return _SSE_HEADERS

    def message_json(self, message: Dict[str, Any], inbound: Inbound) -> Any:
        """A whole Message as this client's JSON answer."""
        return message

    def error_body(self, exc: AgproxyError) -> Any:
        """agproxy's error as this client's error JSON."""
        return exc.body()

    def error_status(self, exc: AgproxyError) -> int:
        """The HTTP status this client gets for agproxy's error (what its retries act on)."""
        return exc.status

    def count_json(self, counted: Dict[str, Any]) -> Any:
        """A token count (Anthropic's ``{"input_tokens": N}``) as this client's answer."""
        return counted

    def model_list(self, models: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Anthropic model objects as this client's list of models."""
        return models_list(models, "anthropic")

    def whole(self, answer: WholeAnswer, inbound: Inbound) -> Union[Response, StreamingResponse]:
        """A whole answer as the client asked for it: its JSON (the upstream's own, where it passed
        through), or its stream in one write."""
        if not inbound.stream and answer.native_json is not None:
            return Response(200, [("Content-Type", "application/json")] + list(answer.headers), answer.native_json)
        if not inbound.stream:
            return json_response(200, self.message_json(answer.message, inbound), answer.headers)
        events = answer.events or message_events(answer.message)
        return StreamingResponse(200, self.stream_headers(inbound) + list(answer.headers),
                                 _iterate([self.encoder(inbound).encode(events)]), lambda: None)


class ChatDialect(Dialect):
    """OpenAI Chat Completions (``POST /v1/chat/completions``), as Aider, Continue, Cline,
    opencode and the openai SDK speak it (section 7's ``chat_*`` translators): its chunks name
    the model the client asked for (an ``openai`` upstream's own, passed through, name its own),
    and its errors take OpenAI's shape."""

    name = "chat"
    model_advice = "the request's model"
    key_advice = "as Authorization: Bearer (the tool's API key)"
    answers_warmups = False
    checks_structured_output = True
    native_kind = "openai"

    def inbound(self, request: Request, body: Dict[str, Any], model: Optional[str]) -> Inbound:
        changes: Dict[str, int] = {}
        internal = chat_request_to_anthropic(body, changes)
        return Inbound(internal, internal.get("stream") is True,
                       (str(body.get("model"))[:200], int(time.time()), chat_include_usage(body),
                        chat_client_tool_names(body)), changes)

    def encoder(self, inbound: Inbound) -> StreamEncoder:
        model, created, include_usage, names = inbound.context
        return ChatStreamEncoder(model, created, include_usage, names)

    def native(self, body: Dict[str, Any], inbound: Inbound) -> Optional[Tuple[Dict[str, Any], bool]]:
        return body, inbound.context[2]

    def native_encoder(self, inbound: Inbound) -> StreamEncoder:
        return NativeStreamEncoder("chat")

    def message_json(self, message: Dict[str, Any], inbound: Inbound) -> Any:
        model, created, _, names = inbound.context
        return anthropic_message_to_chat(message, model, created, names)

    def error_body(self, exc: AgproxyError) -> Any:
        return chat_error_body(exc.status, exc.error_type, exc.message)

    def error_status(self, exc: AgproxyError) -> int:
        return overload_status(exc.status)

    def model_list(self, models: List[Dict[str, Any]]) -> Dict[str, Any]:
        return models_list(models, "openai")


class ResponsesDialect(Dialect):
    """The OpenAI Responses API (``POST /v1/responses``), as Codex CLI speaks it (section 7's
    ``responses_*`` translators): the whole history each turn (``store: false``), tools flattened
    from namespaces and unflattened on the way back by the request's own tool table, thinking kept
    in ``encrypted_content``. The encoder and the answer echo the client's request, so it is kept."""

    name = "responses"
    model_advice = "in Codex CLI, -m NAME or model in config.toml"
    key_advice = "as Authorization: Bearer (Codex CLI: the variable its provider's env_key names)"
    answers_warmups = False
    checks_structured_output = True

    def inbound(self, request: Request, body: Dict[str, Any], model: Optional[str]) -> Inbound:
        changes: Dict[str, int] = {}
        internal = responses_request_to_anthropic(body, changes)
        return Inbound(internal, internal.get("stream") is True, (str(body.get("model"))[:200], int(time.time()), body),
                       changes)

    def encoder(self, inbound: Inbound) -> StreamEncoder:
        model, created, body = inbound.context
        return ResponsesStreamEncoder(model, body, created_at=created)

    def message_json(self, message: Dict[str, Any], inbound: Inbound) -> Any:
        model, created, body = inbound.context
        return anthropic_message_to_responses(message, body, model=model, created_at=created)

    def error_body(self, exc: AgproxyError) -> Any:
        body = responses_error_body(exc.status, exc.error_type, exc.message)
        if isinstance(exc, ClientLimited) and exc.final:  # Codex CLI stops at once on this code; on any
            # other 429 it sleeps the retry-after, hours for a spent day (it ignores x-should-retry)
            body["error"].update(type="insufficient_quota", code="insufficient_quota")
        return body

    def error_status(self, exc: AgproxyError) -> int:
        return responses_error_status(exc.status)

    def model_list(self, models: List[Dict[str, Any]]) -> Dict[str, Any]:
        return models_list(models, "openai")


class GeminiDialect(Dialect):
    """Gemini's generateContent, streamGenerateContent and countTokens (``/v1beta/models/{model}:METHOD``),
    as Gemini CLI and the google-genai SDK speak them (section 7's ``gemini_*`` translators): the
    model comes from the path, a stream is SSE with ``alt=sse`` and one JSON array written as it
    goes without, and the client's own tool names come back in its calls."""

    name = "gemini"
    model_advice = "in Gemini CLI, -m NAME"
    key_advice = "as x-goog-api-key (Gemini CLI: GEMINI_API_KEY)"
    answers_warmups = False
    checks_structured_output = True
    native_kind = "gemini"

    def inbound(self, request: Request, body: Dict[str, Any], model: Optional[str]) -> Inbound:
        method = urllib.parse.unquote(request.path).rpartition(":")[2]
        changes: Dict[str, int] = {}
        if method == "countTokens":
            return Inbound(gemini_count_request_to_anthropic(body, model or "", changes), False, None, changes)
        stream = method == "streamGenerateContent"
        internal = gemini_request_to_anthropic(body, model or "", stream=stream, notes=changes)
        sse = "sse" in urllib.parse.parse_qs(request.query).get("alt", [])
        return Inbound(internal, stream, (model or "", sse, gemini_client_tool_names(body),
                                          gemini_include_thoughts(body)), changes)

    def encoder(self, inbound: Inbound) -> StreamEncoder:
        model, sse, names, thoughts = inbound.context
        return GeminiStreamEncoder(model, sse=sse, names=names, include_thoughts=thoughts)

    def native(self, body: Dict[str, Any], inbound: Inbound) -> Optional[Tuple[Dict[str, Any], bool]]:
        return (body, True) if inbound.context is not None else None  # a count has no context: never passed

    def native_encoder(self, inbound: Inbound) -> StreamEncoder:
        return NativeStreamEncoder("gemini", sse=inbound.context[1])

    def stream_headers(self, inbound: Inbound) -> Headers:
        return _SSE_HEADERS if inbound.context[1] else [("Content-Type", "application/json; charset=utf-8"),
                                                         ("Cache-Control", "no-cache")]

    def message_json(self, message: Dict[str, Any], inbound: Inbound) -> Any:
        model, _, names, thoughts = inbound.context
        return anthropic_message_to_gemini(message, model, names=names, include_thoughts=thoughts)

    def error_body(self, exc: AgproxyError) -> Any:
        """Gemini's error JSON, with what Gemini CLI needs to stop or to wait (:func:`gemini_error_body`):
        a client's spent day as a per-day quota (it stopped only after ten tries in minutes), and
        the ``retry-after`` agproxy knows (a client's minute window, its requests in flight, an
        upstream's reset) as a RetryInfo, so that it waits that long, not its own backoff."""
        wait = header_value(exc.headers, "retry-after")
        seconds = _parse_duration(wait) if wait else None
        spent_day = isinstance(exc, ClientLimited) and exc.final and exc.limit == "tokens_per_day"
        return gemini_error_body(self.error_status(exc), exc.error_type, exc.message,
                                 retry_after_s=None if seconds is None else math.ceil(seconds),
                                 quota_id=GEMINI_SPENT_DAY_QUOTA if spent_day else "")

    def error_status(self, exc: AgproxyError) -> int:
        return overload_status(exc.status)

    def count_json(self, counted: Dict[str, Any]) -> Any:
        return gemini_count_json(counted)

    def model_list(self, models: List[Dict[str, Any]]) -> Dict[str, Any]:
        return gemini_models_list(models)


#: The quota a client's spent tokens_per_day is said to exceed on Gemini's routes: Gemini CLI stops
#: at once on a quotaId that contains ``PerDay`` (:func:`gemini_error_body`).
GEMINI_SPENT_DAY_QUOTA = "TokensPerDayPerClient"
#: What Gemini's clients may ask of a model (``POST /v1beta/models/{model}:METHOD``).
GEMINI_METHODS = ("generateContent", "streamGenerateContent", "countTokens")


#: Every client protocol agproxy serves, by name (the routes pick one by path: :func:`dialect_of_path`).
DIALECTS: Dict[str, Dialect] = {"anthropic": Dialect(), "chat": ChatDialect(), "responses": ResponsesDialect(),
                                "gemini": GeminiDialect()}
#: The paths of each client protocol but Anthropic's, each with the paths under it (an SDK's
#: ``GET /v1/responses/{id}`` is refused in OpenAI's shape too).
DIALECT_PATHS = (("/v1/chat/completions", "chat"), ("/v1/responses", "responses"), ("/v1beta", "gemini"))


def dialect_of_path(path: str) -> Dialect:
    """The client protocol a path belongs to (Anthropic's for every path of no other), so that
    an error answers in the shape its client reads, even one refused before its handler ran."""
    for prefix, name in DIALECT_PATHS:
        if (path == prefix or path.startswith(prefix + "/")) and name in DIALECTS:
            return DIALECTS[name]
    if path.startswith("/v1/models/") and ":" in urllib.parse.unquote(path):  # Gemini's methods under /v1
        return DIALECTS["gemini"]
    return DIALECTS["anthropic"]


# -- one adapter per upstream kind -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ProfileFit:
    """What an upstream answered ``check``'s request shaped like Claude Code's (the facts; the
    check's line words them)."""

    path: str  # where the probe went, relative to base_url
    spent: bool  # it went where a completion is made (the upstream has no token count): 1 token asked for
    status: int  # the answer to the shaped request
    said: bytes  # that answer's body
    extras_taken: Optional[bool]  # the shaped request was taken, refused for its extras, or None: neither
    basic_taken: bool = False  # the same request without the extras was taken (asked when they were refused)
    no_route: bool = False  # /v1/messages too is absent (404 not naming the model, or 405): no Messages API there


#: The bytes of a relayed content_block_delta after its content's opening quote that are not its
#: content: ``":"`` before it, ``"}}`` and the blank line after.
_DELTA_TAIL_BYTES = len(b'":"') + len(b'"}}\n\n')


@dataclasses.dataclass(eq=False)
class CallFacts:
    """What one attempt at an upstream learned and did, for the gateway to apply once the attempt
    ends (an adapter never reaches back into the gateway): the lessons it succeeded with, a context
    window the server named, the changes made to the request, what to say once, counters, and
    what the answer said of itself (its usage, the upstream's ids for it)."""

    lessons: Optional[_Lessons] = None  # the request succeeded without these: every later one is sent so
    window: Optional[int] = None  # the context window the server named in an error
    changes: List[Tuple[str, Dict[str, int]]] = dataclasses.field(default_factory=list)  # (stage, kind: count)
    #: (session or upstream, kind, message, args): said once per session and kind
    notes: List[Tuple[Optional[str], str, str, Tuple[Any, ...]]] = dataclasses.field(default_factory=list)
    counters: Dict[str, int] = dataclasses.field(default_factory=dict)
    #: the answer's usage under Anthropic's names, the latest counts (a stream's fill in as it is read)
    usage: Dict[str, Any] = dataclasses.field(default_factory=dict)
    upstream_ids: List[str] = dataclasses.field(default_factory=list)
    #: a relayed stream's content so far, in characters, and whether its final usage (message_delta)
    #: came: a stream cut before it (the client left, the upstream broke) counts its output from these
    relayed_chars: int = 0
    final_usage: bool = False

    def relayed(self, batch: List[Event]) -> None:
        """Take note of a relayed batch: the characters of its content, and its final usage."""
        chars = 0
        for event in batch:
            name = event.name
            if name == RELAYED_DELTAS:
                chars += event.chars  # type: ignore[attr-defined]
            elif name == "content_block_delta":
                raw = event.raw
                if raw is not None:  # its last string is its content: `..."text":"Hello"}}` + blank line
                    start = raw.rfind(b'":"')
                    if raw.find(b'": "', start if start > 0 else 0) >= 0:  # (spaced: rarely, upstream's own)
                        start = raw.rfind(b'": "') + 1
                    size = len(raw) - start - _DELTA_TAIL_BYTES
                    if start > 0 and size > 0:
                        chars += size
                else:
                    delta = event.data.get("delta") if isinstance(event.data.get("delta"), dict) else {}
                    content = delta.get("text") or delta.get("partial_json") or delta.get("thinking")
                    chars += len(content) if isinstance(content, str) else 0
            elif name == "message_delta":
                self.final_usage = True
        self.relayed_chars += chars

    def cut_output(self) -> None:
        """A relayed stream that ended before its final usage counts at least the output it relayed
        (about four characters a token): the upstream bills what it generated, and a client that
        interrupts a long answer must not spend none of its day's budget."""
        if not self.final_usage and self.relayed_chars > 0:
            estimate = max(0, self.relayed_chars) // 4
            said = upstream_count(self.usage.get("output_tokens")) or 0
            self.usage["output_tokens"] = max(said, estimate)

    def note(self, session: Optional[str], kind: str, message: str, *args: Any) -> None:
        """Ask for ``message`` to be logged, once per session (or upstream) and kind."""
        self.notes.append((session, kind, message, args))

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


@dataclasses.dataclass(eq=False)
class Call:
    """What one attempt at an upstream needs, and nothing of the gateway's: the client's request
    (parsed, its bytes for a private copy to change, the headers a few choices read), the route
    (one upstream, the model sent), the account, the headers the answer carries, where to
    register a read that a departing client cuts, and the facts the attempt leaves."""

    body: Dict[str, Any]  # the client's request, parsed (never changed)
    raw: bytes  # its bytes
    client_headers: Headers  # the client's request headers
    route: Route
    account: Account
    answered: Headers = ()  # X-Mapped-Model, X-Account-Email
    on_client_gone: List[Callable[[], None]] = dataclasses.field(default_factory=list)
    stream_upstream: bool = True  # ask the upstream for a stream (force_stream_internally) even for JSON
    ping_interval_s: float = 10.0
    facts: CallFacts = dataclasses.field(default_factory=CallFacts)
    #: the client's own request, where it passes through untranslated to an upstream of its
    #: protocol (:meth:`Dialect.native`), and whether the client gets the stream's usage chunk
    native: Optional[Dict[str, Any]] = None
    native_usage_chunk: bool = True
    #: where each member's value lies in ``raw``'s text, where ``body`` is ``raw`` parsed (the client's
    #: own bytes): a changed body is written from its unchanged members' text (:func:`spliced_json`)
    raw_spans: Optional[Dict[str, Tuple[int, int]]] = None

    @property
    def upstream(self) -> Upstream:
        return self.route.upstream

    @property
    def session(self) -> Optional[str]:
        return session_id(self.client_headers, self.body)

    def header(self, name: str) -> Optional[str]:
        """A header of the client's request."""
        return header_value(self.client_headers, name)

    def private_body(self) -> Dict[str, Any]:
        """A copy of the client's request to change (parsing its bytes again is the fastest deep copy)."""
        return json.loads(self.raw or b"{}")


@dataclasses.dataclass(eq=False)
class AnswerStream:
    """An attempt's answer to relay as a stream: the upstream response it reads, the headers, and
    the relay of its events (given what to call when it ends). The gateway turns it into the
    client's streaming response, holding the account's slot until the relay ends."""

    response: UpstreamResponse
    headers: Headers
    #: the relay, given the client's encoder, what to call when it ends and what to tell the words
    #: of an error that ends it
    relay: Callable[[StreamEncoder, Callable[[], None], Callable[[str], None]], AsyncIterator[bytes]]
    #: how long the client may be sent nothing before it gets a ping (None: the upstream sends its own)
    ping_interval_s: Optional[float] = None


@dataclasses.dataclass(eq=False)
class AdapterState:
    """What every adapter reads and shares, and the only part of the gateway they see: the
    upstream client, the redactor, the clock, what upstreams rejected and the windows they named,
    and the signature books."""

    client: UpstreamClient
    redact: Redactor
    clock: Callable[[], float]
    learned: LearnedRejections
    windows: LearnedWindows
    signatures: SignatureBook
    call_signatures: CallSignatures


class Adapter:
    """An upstream kind behind one interface, so the gateway, ``check`` and the model list never
    compare kind names: the key's header, the paths to list models and to probe, one attempt at a
    Message, and (where the kind has one) the upstream's own token count. An adapter gets a
    :class:`Call` for each attempt and the :class:`AdapterState` they all share; what it learns
    and does it leaves in the call's :class:`CallFacts`, for the gateway to apply."""

    kind = ""
    #: the header an account's key goes in, and how its value is written
    key_header = ("Authorization", "Bearer {key}")
    #: where the upstream lists its models (None: it has no list), relative to base_url
    models_path: Optional[str] = None
    #: what ``agproxy check`` asks for to probe an account
    probe_path = "/models"
    #: what ``check`` says to do when nothing answers at the probe path
    not_found_advice = "the base_url must be the API's root"
    #: whether an account may have no key (a local server takes none) without a warning from ``check``
    keys_optional = False

    #: a version path at the end of base_url that agproxy adds itself (a regex), and what to say of it
    added_version_path: Optional[str] = None
    added_version_problem = ""

    @classmethod
    def base_url_problem(cls, upstream: Upstream) -> Optional[str]:
        """What is wrong with an upstream's base_url that no request can get past (a version path
        agproxy adds itself), for ``check`` and the start-up log."""
        if cls.added_version_path and re.search(cls.added_version_path, upstream.base_url):
            return cls.added_version_problem
        return None

    @classmethod
    async def profile_probe(cls, client: UpstreamClient, upstream: Upstream, account: Account,
                            model: str) -> Optional[ProfileFit]:
        """Which request shape the upstream takes, for ``check``, where the kind has profiles to
        choose from; None where it has none."""
        return None

    @classmethod
    def listed_models(cls, parsed: Any) -> Optional[Tuple[List[Dict[str, Any]], Optional[str]]]:
        """A page of the upstream's model list as Anthropic model objects, and the token of the
        next page if there is one; None for an answer that is not a model list."""
        data = parsed.get("data") if isinstance(parsed, dict) else None
        if not isinstance(data, list):
            return None
        return [_model_object(str(m["id"]), str(m.get("display_name") or m["id"]),
                              m.get("created_at") if isinstance(m.get("created_at"), str) else None)
                for m in data if isinstance(m, dict) and m.get("id")], None
    #: count_tokens goes to the upstream, through the account pool, with retries
    counts_upstream = False
    #: the answers are made here, with no upstream (the record calls them local)
    answers_locally = False

    def __init__(self, state: AdapterState) -> None:
        self.state = state

    @classmethod
    def auth_headers(cls, upstream: Upstream, account: Account) -> Headers:
        """The account's key in this kind's header (none for an empty key), then the upstream's
        configured ``headers``: the one place either is added, for every call."""
        name, value = cls.key_header
        headers: Headers = [(name, value.format(key=account.api_key))] if account.api_key else []
        return headers + list(upstream.headers)

    @classmethod
    def probe_headers(cls, upstream: Upstream, account: Account) -> Headers:
        """The headers of a GET to this kind's model list or probe path."""
        return [("Accept", "application/json"), ("User-Agent", f"agproxy/{__version__}")] + \
            cls.auth_headers(upstream, account)

    #: error statuses whose text may name what to strip, and whether a thinking-signature refusal heals
    heal_statuses: Tuple[int, ...] = (400,)
    heal_thinking = False

    def prepare(self, call: Call, stream: bool, strip_thinking: bool,
                trial: _Lessons) -> Tuple[bytes, Dict[str, Any], Optional[str]]:
        """The body to send (its bytes and the object), and the ``anthropic-beta`` value if any."""
        raise NotImplementedError

    def window(self, call: Call) -> Optional[int]:
        """The context window in effect for the call's upstream and model: the config's, or a
        smaller one the server named (before, or in this very attempt)."""
        known = self.state.windows.window(call.upstream, call.route.model)
        named = call.facts.window
        return min(known, named) if known and named else known or named

    def headers(self, call: Optional[Call], upstream: Upstream, account: Account, beta: Optional[str],
                stream: bool) -> Headers:
        """The headers of a call: content type, what is accepted, the account's key."""
        return [("Content-Type", "application/json"), ("Accept", "text/event-stream" if stream else "application/json"),
                ("Accept-Encoding", "identity"), ("User-Agent", f"agproxy/{__version__}")] + \
            self.auth_headers(upstream, account)

    async def send(self, call: Call, path: str, stream: bool,
                   max_tokens: Optional[int] = None) -> Tuple[UpstreamResponse, Dict[str, Any]]:
        """Send to the upstream and return its successful answer and what was sent, healing on the
        way as :func:`heal_decision` says; a request that succeeds after healing leaves its lesson
        in the call's facts, for every later request. ``max_tokens`` is sent in place of the
        client's, where given. Other error answers raise an :class:`AgproxyError` that keeps the
        upstream's status and reset time."""
        upstream, facts, state = call.upstream, call.facts, self.state
        trial, strip_thinking = _Lessons(max_tokens=max_tokens), False
        while True:
            payload, sent, beta = self.prepare(call, stream, strip_thinking, trial)
            try:
                response = await state.client.request(
                    "POST", upstream_url(upstream.base_url, path),
                    self.headers(call, upstream, call.account, beta, stream), payload,
                    timeout_s=upstream.timeout_s, connect_timeout_s=upstream.connect_timeout_s)
            except UpstreamFailure as exc:
                exc.message = f"upstream {upstream.name!r}: {exc.message}"
                raise
            if response.status < 300:
                facts.lessons = trial
                return response, sent
            data = state.redact.data(await _error_body(upstream, response))  # before anything cuts it
            heal = heal_decision(response.status, data, sent, beta, heals=trial.heals,
                                 known_fields=state.learned.fields(upstream.name) + trial.fields,
                                 known_betas=state.learned.betas(upstream.name) + trial.betas,
                                 heal_statuses=self.heal_statuses, heal_thinking=self.heal_thinking,
                                 thinking_stripped=strip_thinking, window=self.window(call), fitted=trial.fitted)
            if heal.action in ("fit", "overflow") and heal.window:
                known = self.window(call)
                facts.window = heal.window if not known or heal.window < known else facts.window
            if heal.action == "fit":
                trial.max_tokens, trial.fitted = heal.max_tokens, True
                facts.note(upstream.name, "fit", "upstream %r has no room for the completion asked for beside the "
                                                 "prompt; asking for %d tokens instead%s", upstream.name,
                           heal.max_tokens, "" if self.window(call) else
                           " (set its context_window to do so before sending)")
            elif heal.action == "retry":
                trial.fields += heal.fields
                trial.betas += heal.betas
                trial.heals += 1
            elif heal.action == "strip_thinking":
                strip_thinking = True
                facts.count("signature_fallback")
                facts.note(session_id(call.client_headers, sent), "signature",
                           "upstream %r refused thinking signatures made elsewhere; retrying this session's "
                           "requests without the old thinking blocks", upstream.name)
            elif heal.action == "overflow":
                tokens = heal.prompt_tokens if heal.prompt_tokens is not None else estimate_input_tokens(call.body)
                raise self.overflow(call, max(tokens, heal.window or 0), heal.window or 0)
            else:
                raise _upstream_error(upstream, response, data, state.clock(),
                                      self.unhealed_hint(upstream, response.status, data))

    def unhealed_hint(self, upstream: Upstream, status: int, data: bytes) -> Optional[str]:
        """What the user can change when the upstream refused a request agproxy could not heal."""
        return None

    def overflow(self, call: Call, tokens: int, window: int) -> InvalidRequest:
        """The "prompt is too long" a client compacts on, said in the log once per session with the
        upstream's own window (the client is told of its own, larger one)."""
        client_window = client_context_window(call.client_headers, call.body.get("model"))
        error = prompt_too_long(tokens, window, client_window)
        call.facts.note(call.session, "overflow",
                        "the prompt (about %d tokens) does not fit the %d-token window of upstream %r; the "
                        "client is told \"%s\" in its own window's terms, so that it compacts", tokens, window,
                        call.upstream.name, error.message)
        return error

    #: where a Messages request goes, relative to base_url (:meth:`messages_path_for`)
    messages_path = ""

    def messages_path_for(self, route: Route, stream: bool) -> str:
        """Where a Messages request for ``route`` goes, relative to base_url."""
        return self.messages_path

    #: the client protocol this kind speaks, whose requests pass through to it untranslated
    #: (:class:`NativeChunks`, :func:`native_answer`); "" for none
    native_protocol = ""
    #: whether every answer needs the input estimate (else only a context_window asks for it)
    estimates_input = False
    #: whether agproxy pings the client while the upstream is silent (an upstream may send its own)
    pings = True

    async def messages(self, call: Call) -> Union[WholeAnswer, AnswerStream]:
        """One attempt at answering a Messages request on the call's upstream and account, the
        same pipeline for every kind: check the window, send (healing on the way), then relay the
        answer's events (nothing reaches the client before its head, so a failure until then can
        still be retried), or assemble them, or read a whole answer, in the client's shape. The
        answer's usage and the upstream's ids for it are left in the call's facts."""
        upstream, body, facts = call.upstream, call.body, call.facts
        window = self.window(call)
        # the client's own window matters only beside the upstream's (its usage scaled up to it)
        client_window = client_context_window(call.client_headers, body.get("model")) if window else 0
        estimate = await _estimate_tokens(body, len(call.raw)) if window or self.estimates_input else 0
        if window and estimate > window:
            raise self.overflow(call, estimate, window)
        stream = bool(body.get("stream"))
        stream_upstream = stream or call.stream_upstream
        response, _ = await self.send(call, self.messages_path_for(call.route, stream_upstream), stream_upstream,
                                      fitted_max_tokens(body, window, estimate) if window else None)
        headers = list(call.answered) + relayed_upstream_headers(response.headers)
        if response.is_event_stream:
            events = self.answer_events(response, call, estimate)
            if stream:
                head = await _watched(call, response, first_events(events))
                headers = headers + self.upstream_id_headers(facts.upstream_ids)
                native = call.native is not None  # its chunks go as they came (their own redactor)
                scale = UsageScaler(window, client_window).scale if window and not native else None
                redact = None if native else DeltaRedactor(self.state.redact).feed  # a key split across deltas
                observe = _both(facts.relayed, self.watcher(upstream))
                return AnswerStream(response, headers, lambda encoder, on_end, on_error: relay_events(
                    head, events, response, upstream.name, observe=observe, rewrite=scale, transform=redact,
                    on_end=on_end, on_error=on_error, encoder=encoder), call.ping_interval_s if self.pings else None)
            message = await _watched(call, response, accumulate_events(events))
            native_json = None
        else:
            data = await _watched(call, response, response.read_all())
            message = self.answer_message(data, response, call)
            native_json = data if call.native is not None and native_answer(
                data, self.native_protocol, self.state.redact) else None
        headers = headers + self.upstream_id_headers(facts.upstream_ids)
        self.received(message, upstream)
        if isinstance(message.get("usage"), dict):
            facts.usage.update(message["usage"])
        if window:
            scale_usage(message.get("usage"), window, client_window)
        # asked for a stream, a whole Message is sent as one
        return WholeAnswer(message, headers, native_json=native_json)

    def answer_events(self, response: UpstreamResponse, call: Call, estimate: int) -> AsyncIterator[List[Event]]:
        """The upstream's event stream as Anthropic events, in batches (:class:`Event` lists); a translated
        answer gets its own message id. The upstream's id and its usage go to the call's facts."""
        raise NotImplementedError

    def answer_message(self, data: bytes, response: UpstreamResponse, call: Call) -> Dict[str, Any]:
        """The upstream's whole (not streamed) answer as an Anthropic Message (ids as in :meth:`answer_events`)."""
        raise NotImplementedError

    def upstream_id_headers(self, upstream_ids: List[str]) -> Headers:
        """``X-Upstream-Message-Id``: the id the upstream gave a translated answer, where the client
        can still find it (the answer itself carries agproxy's own)."""
        return [("X-Upstream-Message-Id", self.state.redact.text(upstream_ids[0])[:MAX_UPSTREAM_ID_CHARS])] \
            if upstream_ids else []

    def watcher(self, upstream: Upstream) -> Optional[Callable[[List[Event]], None]]:
        """What looks at the relayed events (for the signatures in them), if anything."""
        return None

    def received(self, message: Dict[str, Any], upstream: Upstream) -> None:
        """Look at a whole answer before it goes to the client."""

    async def count(self, body: Dict[str, Any], route: Route, account: Account) -> Optional[int]:
        """The upstream's own count of the request's input tokens (asked with ``account``'s key),
        or None (agproxy estimates)."""
        return None


class AnthropicAdapter(Adapter):
    """Anthropic-compatible upstreams: the request cleaned per profile and passed through, the
    answer relayed as it is (checked event by event), healed past fields and betas it rejects."""

    kind = "anthropic"
    key_header = ("x-api-key", "{key}")
    messages_path = "/v1/messages"
    pings = False  # Anthropic servers send their own
    models_path = "/v1/models?limit=1000"
    probe_path = "/v1/models"
    counts_path = "/v1/messages/count_tokens"
    counts_upstream = True
    heal_thinking = True
    added_version_path = r"/v1/?$"
    added_version_problem = ("base_url ends in /v1, and agproxy adds /v1/messages itself: requests would go to "
                             "/v1/v1/messages; drop the /v1")
    #: the beta ``check`` sends with its request shaped like Claude Code's: one Claude Code sends
    #: (2.1.197 and 2.1.332), and the one its ``context_management`` needs on Anthropic's API
    profile_probe_beta = "context-management-2025-06-27"

    @classmethod
    def probe_headers(cls, upstream: Upstream, account: Account) -> Headers:
        return [("anthropic-version", DEFAULT_ANTHROPIC_VERSION)] + super().probe_headers(upstream, account)

    @classmethod
    async def profile_probe(cls, client: UpstreamClient, upstream: Upstream, account: Account,
                            model: str) -> Optional[ProfileFit]:
        """Send a request shaped like Claude Code's (a ``cache_control`` mark, an ``anthropic-beta``
        header, ``context_management``) to count_tokens, so that no token is spent (to /v1/messages
        for one token where count_tokens is absent); when it is refused for those extras, send it
        again without them, as the ``compatible`` profile would. Raises :class:`UpstreamFailure`."""
        shaped = {"model": model, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Say OK.", "cache_control": {"type": "ephemeral"}}]}],
            "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}}
        basic = copy.deepcopy(shaped)
        sanitize_request(basic, PROFILE_DEFAULTS["compatible"])

        async def send(path: str, body: Dict[str, Any], beta: Optional[str]) -> Tuple[int, bytes]:
            headers = [("Content-Type", "application/json")] + cls.probe_headers(upstream, account) + \
                ([("anthropic-beta", beta)] if beta else [])
            return await client.fetch("POST", upstream_url(upstream.base_url, path), headers,
                                      json.dumps(body).encode(), deadline_s=upstream.connect_timeout_s)

        def absent(status: int, said: bytes) -> bool:  # a path the server lacks, not "no such model"
            return status == 405 or (status == 404 and model not in upstream_error_text(said))

        path, spent = cls.counts_path, False
        status, said = await send(path, shaped, cls.profile_probe_beta)
        if absent(status, said):
            path, spent = cls.messages_path, True
            shaped["max_tokens"] = basic["max_tokens"] = 1
            status, said = await send(path, shaped, cls.profile_probe_beta)
            if absent(status, said):
                return ProfileFit(path, spent, status, said, None, no_route=True)
        if status < 300:
            return ProfileFit(path, spent, status, said, True)
        if status not in (400, 422) or not _SCHEMA_REFUSAL.search(upstream_error_text(said)):
            return ProfileFit(path, spent, status, said, None)
        basic_status, _ = await send(path, basic, None)
        return ProfileFit(path, spent, status, said, False, basic_status < 300)

    async def count_by_account(self, call: Call) -> Dict[str, Any]:
        """The upstream's own ``count_tokens`` answer, checked to be a token count."""
        upstream = call.upstream
        response, _ = await self.send(call, self.counts_path, False)
        data = await _watched(call, response, response.read_all(MAX_UPSTREAM_SMALL_BODY_BYTES))
        try:
            counted = loads_strict(data)
        except ValueError:
            counted = None
        if upstream_count(counted.get("input_tokens") if isinstance(counted, dict) else None) is None:
            raise UpstreamFailure(f"upstream {upstream.name!r} answered count_tokens with something that is not a "
                                  "token count")
        return counted

    def headers(self, call: Optional[Call], upstream: Upstream, account: Account, beta: Optional[str],
                stream: bool) -> Headers:
        headers = super().headers(call, upstream, account, beta, stream)
        version = call.header("anthropic-version") if call is not None else None
        headers.insert(4, ("anthropic-version", version or DEFAULT_ANTHROPIC_VERSION))
        return headers[:5] + ([("anthropic-beta", beta)] if beta else []) + headers[5:]

    def prepare(self, call: Call, stream: bool, strip_thinking: bool,
                trial: _Lessons) -> Tuple[bytes, Dict[str, Any], Optional[str]]:
        """The body and beta header to send to this upstream: sanitized per its profile, what it
        has rejected before and what this request is trying without; the client's bytes unchanged
        when nothing needs changing."""
        upstream, route, state = call.upstream, call.route, self.state
        raw = call.raw
        drop_paths = state.learned.fields(upstream.name) + trial.fields
        body = sanitizable_copy(call.body, upstream.rules, drop_paths) or call.private_body()
        changes: Dict[str, int] = {}
        if body.get("model") != route.model:
            body["model"] = route.model
            changes["model_renamed"] = 1
        if stream and not body.get("stream"):
            body["stream"] = True
            changes["stream_forced"] = 1
        _fit_max_tokens(body, trial.max_tokens, changes)
        changes.update(sanitize_request(body, upstream.rules, drop_paths=drop_paths,
                                        drop_thinking=state.signatures.foreign_to(upstream.name)))
        if strip_thinking:
            changes.update(strip_thinking_history(body))
        beta, beta_changes = sanitize_betas(call.header("anthropic-beta"), upstream.rules,
                                            state.learned.betas(upstream.name) + trial.betas)
        changes.update(beta_changes)
        if not changes:
            return raw, body, beta
        call.facts.changes.append(("sanitize", changes))
        if changes == {"stream_forced": 1}:  # the usual change of a request that wants its answer whole
            streamed = stream_made_true(raw, "stream" in call.body)
            if streamed is not None:
                return streamed, body, beta
        if call.raw_spans:
            return spliced_json(raw, call.raw_spans, call.body, body), body, beta
        return _UTF8_JSON.encode(body).encode("utf-8"), body, beta

    def answer_events(self, response: UpstreamResponse, call: Call, estimate: int) -> AsyncIterator[List[Event]]:
        upstream = call.upstream.name  # relayed: its message ids are its own
        return anthropic_events(response, upstream, lambda kind: call.facts.note(
            upstream, "unknown_event:" + excerpt(kind, 40), "upstream %r sent %r events, which are outside the "
            "Messages stream's grammar; they are not relayed", upstream, excerpt(kind, 40)), usage=call.facts.usage)

    def unhealed_hint(self, upstream: Upstream, status: int, data: bytes) -> Optional[str]:
        if status not in (400, 422) or upstream.profile == "compatible" or not _SCHEMA_REFUSAL.search(
                upstream_error_text(data)):
            return None
        return (f"agproxy could not heal this; for an Anthropic-compatible service that is not Anthropic, set "
                f'"profile": "compatible" on upstream {upstream.name!r}: it sends only the basic Messages fields')

    def answer_message(self, data: bytes, response: UpstreamResponse, call: Call) -> Dict[str, Any]:
        try:
            return loads_strict(data)
        except ValueError:
            kind = response.header("content-type") or "no content type"
            raise UpstreamFailure(f"upstream {call.upstream.name!r} answered HTTP {response.status} with something "
                                  f"that is not JSON ({kind[:60]})") from None

    def watcher(self, upstream: Upstream) -> Optional[Callable[[List[Event]], None]]:
        return SignatureWatcher(self.state.signatures, upstream.name).feed

    def received(self, message: Dict[str, Any], upstream: Upstream) -> None:
        check_message(message, upstream.name)
        self.state.signatures.record_message(message, upstream.name)


#: Statuses that say a route does not exist on the server (rather than that it failed this time).
_ROUTE_ABSENT_STATUSES = (404, 405, 501)
#: How long a tokenizer route found absent is not asked again: a server upgraded meanwhile is
#: found within the hour, and a /context of Claude Code (dozens of counts) asks it once.
TOKENIZER_ABSENT_S = 3600.0


class OpenAIAdapter(Adapter):
    """OpenAI-compatible upstreams (vLLM, Ollama, llama.cpp, ...): the request translated to Chat
    Completions, the answer translated back, healed past arguments the server names as unknown."""

    kind = "openai"
    native_protocol = "chat"
    models_path = "/models"
    not_found_advice = "the base_url must include the API's version path, e.g. http://host:8000/v1"
    keys_optional = True  # local servers take no key
    messages_path = "/chat/completions"
    estimates_input = True  # message_start reports the input tokens before the server has counted them

    heal_statuses = (400, 422)

    def __init__(self, state: AdapterState) -> None:
        super().__init__(state)
        #: per upstream: until when its tokenizer route is known to be absent (it is not asked meanwhile)
        self._tokenizer_absent_until: Dict[str, float] = {}
        #: upstreams whose tokenizer failed since it last answered (each failure is said once, not per count)
        self._tokenizer_failing: Set[str] = set()

    def prepare(self, call: Call, stream: bool, strip_thinking: bool,
                trial: _Lessons) -> Tuple[bytes, Dict[str, Any], Optional[str]]:
        """The Chat Completions request for this upstream: sanitized, translated (a Chat Completions
        client's own, untranslated: :func:`chat_native_request`), minus what it rejected."""
        upstream = call.upstream
        if call.native is not None:
            # the length the client's day budget held (its own, or the default the internal form gave)
            translated, changes = chat_native_request(call.native, call.route.model, stream, upstream.openai,
                                                      trial.max_tokens or call.body.get("max_tokens"))
        else:
            body = call.private_body()
            body["model"] = call.route.model
            if stream:
                body["stream"] = True
            changes = sanitize_request(body, upstream.rules)
            _fit_max_tokens(body, trial.max_tokens, changes)
            translated, translation_changes = anthropic_to_openai(body, upstream.openai, upstream.name)
            changes.update(translation_changes)
        if upstream.extra_body:
            translated.update(copy.deepcopy(upstream.extra_body))
        for path in self.state.learned.fields(upstream.name) + trial.fields:
            _count(changes, f"learned:{path}", drop_path(translated, path.split(".")))
        call.facts.changes.append(("translate" if call.native is None else "passthrough", changes))
        return json.dumps(translated, ensure_ascii=False).encode("utf-8"), translated, None

    def answer_events(self, response: UpstreamResponse, call: Call, estimate: int) -> AsyncIterator[List[Event]]:
        translator = OpenAIStreamTranslator(call.route.model, estimate, _stop_sequences(call.body),
                                            call.facts.upstream_ids.append, call.facts.usage)
        translator.relayed = bool(call.body.get("stream"))
        native = NativeChunks(self.state.redact, self.native_protocol, call.native_usage_chunk) \
            if call.native is not None and translator.relayed else None
        return openai_events(response, translator, native)

    def answer_message(self, data: bytes, response: UpstreamResponse, call: Call) -> Dict[str, Any]:
        name = call.upstream.name
        try:
            answer = loads_strict(data)
        except ValueError:
            raise UpstreamFailure(f"upstream {name!r} answered something that is not JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            raise UpstreamFailure(f"upstream {name!r} answered something that is not a chat completion")
        _tell_upstream_id(call.facts.upstream_ids.append, answer.get("id"))
        return openai_to_anthropic(answer, call.route.model, _stop_sequences(call.body))

    async def count(self, body: Dict[str, Any], route: Route, account: Account) -> Optional[int]:
        """Count the translated prompt with the server's own tokenizer, where it has one."""
        upstream = route.upstream
        style = upstream.openai.tokenize
        if style is None:
            return None
        body = dict(body, model=route.model, max_tokens=1)
        sanitize_request(body, upstream.rules)
        translated, _ = anthropic_to_openai(body, upstream.openai, upstream.name)
        root = re.sub(r"/v1/?$", "", upstream.base_url)
        if style == "vllm":
            payload = {"model": route.model, "messages": translated["messages"]}
            if translated.get("tools"):
                payload["tools"] = translated["tools"]
        else:
            payload = {"content": "\n\n".join(_block_text(m.get("content")) if isinstance(m.get("content"), list)
                                               else str(m.get("content") or "") for m in translated["messages"])}
        now = self.state.clock()
        if self._tokenizer_absent_until.get(upstream.name, 0.0) > now:
            return None
        try:
            status, body = await self.state.client.fetch("POST", root + "/tokenize",
                                                   self.headers(None, upstream, account, None, False),
                                                   json.dumps(payload).encode(), deadline_s=upstream.connect_timeout_s,
                                                   limit=MAX_UPSTREAM_BODY_BYTES)
            data = loads_strict(body) if status == 200 else None
        except (UpstreamFailure, ValueError) as exc:
            self._tokenizer_failed(upstream, f"is unavailable ({exc})")
            return None
        if isinstance(data, dict) and upstream_count(data.get("count")) is not None:
            self._tokenizer_failing.discard(upstream.name)
            return data["count"]
        if isinstance(data, dict) and isinstance(data.get("tokens"), list):
            self._tokenizer_failing.discard(upstream.name)
            return len(data["tokens"])
        if status in _ROUTE_ABSENT_STATUSES:
            self._tokenizer_absent_until[upstream.name] = now + TOKENIZER_ABSENT_S
            self._tokenizer_failed(upstream, f"answered HTTP {status}: the server has no {root}/tokenize (check its "
                                             f"openai.tokenize); it is asked again in {TOKENIZER_ABSENT_S:.0f} s")
        else:
            self._tokenizer_failed(upstream, f"answered HTTP {status}")
        return None

    def _tokenizer_failed(self, upstream: Upstream, what: str) -> None:
        """Say that an upstream's tokenizer failed (counts are estimated meanwhile): once, until it
        answers again; a /context of Claude Code counts dozens of times."""
        if upstream.name in self._tokenizer_failing:
            logging.getLogger("agproxy").debug("tokenizer of upstream %r %s; estimating", upstream.name, what)
            return
        self._tokenizer_failing.add(upstream.name)
        logging.getLogger("agproxy").warning("tokenizer of upstream %r %s; estimating token counts (said once, until "
                                             "it answers)", upstream.name, what)


class DemoAdapter(Adapter):
    """The built-in demo: answers from the request itself, so that a fresh install runs."""

    kind = "demo"
    probe_path = ""
    answers_locally = True

    async def messages(self, call: Call) -> Union[WholeAnswer, AnswerStream]:
        body, message_id = call.body, new_message_id()
        input_tokens = await _estimate_tokens(body, len(call.raw))
        message = demo_message(body, message_id, input_tokens)
        call.facts.usage.update(message["usage"])
        return WholeAnswer(message, list(call.answered), message_events(message, DEMO_PIECE_CHARS))


class GeminiAdapter(Adapter):
    """The Gemini API (``generateContent``): the request translated, the answer translated back,
    each thought signature carried through the Anthropic answer and put back where it came
    from; healed past fields it names as unknown and past signatures it refuses."""

    kind = "gemini"
    native_protocol = "gemini"
    key_header = ("x-goog-api-key", "{key}")
    models_path = "/v1beta/models?pageSize=1000"
    probe_path = models_path
    estimates_input = True  # message_start reports the input tokens before Gemini has counted them
    heal_thinking = True  # a refused signature heals by sending none (Gemini's documented stand-in)
    added_version_path = r"/v1(?:beta|alpha)?/?$"
    added_version_problem = ("base_url ends in a version path, and agproxy adds /v1beta/models/... itself: requests "
                             "would get 404; drop it (e.g. https://generativelanguage.googleapis.com)")

    @staticmethod
    def model_path(upstream: Upstream, model: str) -> str:
        """The path of a model's methods (``models/`` before the name is optional in the config)."""
        name = model[len("models/"):] if model.startswith("models/") else model
        return f"/v1beta/models/{urllib.parse.quote(name, safe='')}"

    @classmethod
    def listed_models(cls, parsed: Any) -> Optional[Tuple[List[Dict[str, Any]], Optional[str]]]:
        models = parsed.get("models") if isinstance(parsed, dict) else None
        if not isinstance(models, list):
            return None
        entries = [(str(m["name"]).split("/", 1)[-1], m.get("displayName")) for m in models
                   if isinstance(m, dict) and isinstance(m.get("name"), str) and m["name"]]
        token = parsed.get("nextPageToken")
        return [_model_object(i, str(d or i)) for i, d in entries], token if isinstance(token, str) and token else None

    def messages_path_for(self, route: Route, stream: bool) -> str:
        path = self.model_path(route.upstream, route.model)
        return f"{path}:streamGenerateContent?alt=sse" if stream else f"{path}:generateContent"

    @staticmethod
    def signer(upstream: Upstream, model: str) -> str:
        """Whose signatures are good on this upstream and model (a model switch makes them foreign)."""
        return f"{upstream.name}/{model}"

    def translate(self, body: Dict[str, Any], route: Route, strip_thinking: bool = False) -> Tuple[Dict[str, Any],
                                                                                                   Dict[str, int]]:
        """The Gemini request for ``body`` on ``route``: sanitized per the upstream's profile, then translated."""
        upstream = route.upstream
        body = dict(body, model=route.model)
        changes = sanitize_request(body, upstream.rules)
        signer, book = self.signer(upstream, route.model), self.state.signatures

        def trusted(signature: str) -> bool:
            return not strip_thinking and book.owner(signature) in (None, signer)

        translated, translation_changes = anthropic_to_gemini(body, route.model, trusted,
                                                              self.state.call_signatures.get)
        changes.update(translation_changes)
        if upstream.extra_body:
            merge_gemini_extra(translated, upstream.extra_body)
        return translated, changes

    def prepare(self, call: Call, stream: bool, strip_thinking: bool,
                trial: _Lessons) -> Tuple[bytes, Dict[str, Any], Optional[str]]:
        """The generateContent request for this upstream (a Gemini client's own, untranslated:
        :meth:`native_request`), minus what it rejected before."""
        upstream = call.upstream
        if call.native is not None:
            return self.native_request(call, strip_thinking, trial)
        body = call.private_body()
        changes: Dict[str, int] = {}
        _fit_max_tokens(body, trial.max_tokens, changes)
        if strip_thinking:  # Gemini refused a signature: none of this history's goes to it again
            for message in body.get("messages") or []:
                for block in _block_list(message.get("content") if isinstance(message, dict) else None):
                    refused = _signature_of(block)[1] if isinstance(block, dict) else ""
                    if refused:
                        self.state.signatures.record(refused, f"(refused by {upstream.name})")
        translated, translation_changes = self.translate(body, call.route, strip_thinking)
        changes.update(translation_changes)
        for path in self.state.learned.fields(upstream.name) + trial.fields:
            _count(changes, f"learned:{path}", drop_path(translated, path.split(".")))
        call.facts.changes.append(("translate", changes))
        if changes.get("web_search_dropped"):
            call.facts.note(session_id(call.client_headers, body), "web_search",
                            "upstream %r: web_search dropped (Gemini searches only for a Gemini model offered no "
                            "functions; this request offers functions)", upstream.name)
        return json.dumps(translated, ensure_ascii=False).encode("utf-8"), translated, None

    def native_request(self, call: Call, strip_thinking: bool,
                       trial: _Lessons) -> Tuple[bytes, Dict[str, Any], Optional[str]]:
        """A Gemini client's own request (:func:`gemini_native_request`): the thought signatures this
        upstream and model did not make are dropped (all of them once it refused one), the
        upstream's ``extra_body`` and what it rejected before as for a translated one."""
        upstream, book = call.upstream, self.state.signatures
        signer = self.signer(upstream, call.route.model)

        def trusted(signature: str) -> bool:
            return not strip_thinking and book.owner(signature) in (None, signer) and not is_packed_thinking(signature)

        translated, changes = gemini_native_request(call.native or {}, trusted, trial.max_tokens)
        if upstream.extra_body:
            merge_gemini_extra(translated, upstream.extra_body)
        for path in self.state.learned.fields(upstream.name) + trial.fields:
            _count(changes, f"learned:{path}", drop_path(translated, path.split(".")))
        call.facts.changes.append(("passthrough", changes))
        return json.dumps(translated, ensure_ascii=False).encode("utf-8"), translated, None

    def recorder(self, route: Route) -> Callable[[str, str], None]:
        """What keeps each signature of an answer: its maker in the book, a call's by its id."""
        signer = self.signer(route.upstream, route.model)

        def record(call_id: str, signature: str) -> None:
            self.state.signatures.record(signature, signer)
            if call_id:
                self.state.call_signatures.record(call_id, signature)

        return record

    def answer_events(self, response: UpstreamResponse, call: Call, estimate: int) -> AsyncIterator[List[Event]]:
        route = call.route
        translator = GeminiStreamTranslator(route.model, estimate, self.recorder(route), gemini_name_map(call.body),
                                            call.facts.upstream_ids.append, call.facts.usage)
        translator.relayed = bool(call.body.get("stream"))
        return gemini_events(response, translator, NativeChunks(self.state.redact, self.native_protocol)
                             if call.native is not None and translator.relayed else None)

    def answer_message(self, data: bytes, response: UpstreamResponse, call: Call) -> Dict[str, Any]:
        route = call.route
        try:
            answer = loads_strict(data)
        except ValueError:
            raise UpstreamFailure(f"upstream {route.upstream.name!r} answered something that is not JSON") from None
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            raise _upstream_error(route.upstream, response, self.state.redact.data(data), self.state.clock())
        return gemini_to_anthropic(answer, route.model, self.recorder(route), names=gemini_name_map(call.body),
                                   on_upstream_id=call.facts.upstream_ids.append)

    async def count(self, body: Dict[str, Any], route: Route, account: Account) -> Optional[int]:
        """Gemini's own count of the translated request (``countTokens``), so the count is exact."""
        upstream = route.upstream
        translated, _ = self.translate(body, route)
        translated["model"] = "models/" + route.model.split("/")[-1]
        try:
            status, data = await self.state.client.fetch(
                "POST", upstream_url(upstream.base_url, self.model_path(upstream, route.model) + ":countTokens"),
                self.headers(None, upstream, account, None, False),
                json.dumps({"generateContentRequest": translated}).encode(), deadline_s=upstream.connect_timeout_s,
                limit=MAX_UPSTREAM_SMALL_BODY_BYTES)
            counted = loads_strict(data) if status == 200 else None
        except (UpstreamFailure, ValueError) as exc:
            logging.getLogger("agproxy").warning("countTokens of upstream %r unavailable (%s); estimating",
                                                 upstream.name, exc)
            return None
        total = upstream_count(counted.get("totalTokens") if isinstance(counted, dict) else None)
        if total is not None:
            return total
        logging.getLogger("agproxy").warning("countTokens of upstream %r answered HTTP %s; estimating", upstream.name,
                                             status)
        return None


#: The one registry of upstream kinds.
ADAPTERS: Dict[str, type] = {a.kind: a for a in (AnthropicAdapter, OpenAIAdapter, DemoAdapter, GeminiAdapter)}


class _Deadline:
    """Closes an upstream response when ``seconds`` have passed, so that whatever is reading it
    ends then. A deadline that needs no cancellation: a ``wait_for`` around reads that have their
    own ``wait_for`` can lose its cancellation (Python 3.11 and older) and then waits as long as
    the upstream keeps trickling."""

    def __init__(self, response: UpstreamResponse, seconds: float, force: bool = False) -> None:
        self.expired = False

        def expire() -> None:
            self.expired = True
            response.close(force)

        self._timer = asyncio.get_running_loop().call_later(seconds, expire)

    def cancel(self) -> None:
        self._timer.cancel()


async def _read_by_deadline(response: UpstreamResponse, reading: Awaitable[Any], expired: str) -> Any:
    """Await ``reading`` of ``response`` within the upstream's ``timeout_s`` as a whole (an upstream
    that trickles bytes cannot stretch it), else :class:`UpstreamFailure` 504 saying ``expired``;
    on any failure the connection is closed rather than left half read."""
    deadline = _Deadline(response, response.timeout_s)
    try:
        result = await reading
    except BaseException:
        response.close()
        if deadline.expired:
            raise UpstreamFailure(expired, status=504) from None
        raise
    finally:
        deadline.cancel()
    if deadline.expired:  # what was read ends where the deadline closed it: it is not the answer
        raise UpstreamFailure(expired, status=504)
    return result


async def _error_body(upstream: Upstream, response: UpstreamResponse) -> bytes:
    """The body of an upstream's answer that is not a success (at most 1 MiB, within timeout_s);
    a redirect is refused here: agproxy follows none, the base_url must name the API itself."""
    data = await _read_by_deadline(
        response, response.read_all(MAX_UPSTREAM_SMALL_BODY_BYTES),
        f"upstream {upstream.name!r} sent no whole error body within {response.timeout_s:g} s")
    if response.status < 400:
        location = (response.header("location") or "nowhere")[:200]
        raise UpstreamFailure(f"upstream {upstream.name!r} redirected (HTTP {response.status} to {location}); "
                              "agproxy follows no redirects: set its base_url to the final address")
    return data


#: Request bodies above this size are decoded member by member, noting where each lies, so that a
#: changed one is written from its kept members' own text (:func:`spliced_json`): for a 2 MB body
#: that saves a ``json.dumps`` of ~8 ms; below it, the ~15 µs the member-by-member decode adds
#: exceeds what it saves.
_SPLICED_BODY_BYTES = 16 * 1024
#: Request bodies above this size give the event loop back between their parse and the rest of their
#: preparation (validation, sanitizing, encoding), each some ms for a 2 MB Claude Code body: other
#: streams' events wait for the longer of the two, not for both. Below it, a turn of the loop costs
#: more than the wait it saves.
_YIELD_AFTER_PARSE_BYTES = 256 * 1024
#: Request bodies above this size have their tokens estimated in a worker thread, so that one
#: huge request does not stall every other client (the estimate walks every character).
_ESTIMATE_OFF_LOOP_BYTES = 1024 * 1024


async def _estimate_tokens(body: Dict[str, Any], size: int) -> int:
    """:func:`estimate_input_tokens`, off the event loop for a large body."""
    if size < _ESTIMATE_OFF_LOOP_BYTES:
        return estimate_input_tokens(body)
    return await asyncio.get_running_loop().run_in_executor(None, estimate_input_tokens, body)


def _upstream_error(upstream: Upstream, response: UpstreamResponse, data: bytes, now: float,
                    hint: Optional[str] = None) -> AgproxyError:
    """An upstream's error answer to relay, keeping its status, rate-limit headers and reset time;
    ``hint`` says what the user can change (the message ends with it). A 4xx keeps the upstream's
    words for the attempt's log line."""
    error = anthropic_error_from_upstream(response.status, data, upstream.name)
    if 400 <= response.status < 500 and not error.upstream_words:
        error.upstream_words = error.message[:MAX_LOGGED_WORDS] + (f"; {hint}" if hint else "")
    if hint:
        error.message = f"{error.message} ({hint})"
    error.headers.extend(relayed_upstream_headers(response.headers))
    error.reset_s = rate_limit_reset(response.headers, data, now)
    if error.reset_s is not None and header_value(error.headers, "retry-after") is None:
        error.headers.append(("retry-after", str(max(1, math.ceil(error.reset_s)))))
    return error


async def _watched(call: Call, response: UpstreamResponse, reading: Awaitable[Any]) -> Any:
    """Await a read of ``response`` that a departing client cuts short, within the upstream's
    ``timeout_s`` as a whole (:func:`_read_by_deadline`)."""
    call.on_client_gone.append(response.close)
    try:
        return await _read_by_deadline(response, reading, f"no answer within timeout_s ({response.timeout_s:g} s)")
    finally:
        call.on_client_gone.remove(response.close)


# -- the relay pipeline: one for every kind ------------------------------------------------------
#
# Each kind turns its upstream's event stream into Anthropic events (Adapter.answer_events): a
# stream of batches, each a list of the :class:`Event` objects one read completed (empty for a read
# that completed none), each decoded once. The pipeline then does the same for every kind: hold
# the head back until it commits (first_events), relay the rest with pings and the idle deadline,
# encoding each batch once on its way out (relay_events), or gather it into one Message
# (accumulate_events), all from the events' names and data.


async def anthropic_events(response: UpstreamResponse, upstream: str,
                           on_unknown: Optional[Callable[[str], None]] = None,
                           usage: Optional[Dict[str, Any]] = None) -> AsyncIterator[List[Event]]:
    """An Anthropic event stream as it arrives, in checked batches of whole events
    (:class:`EventStreamCheck`); it ends at ``message_stop`` (or an error event), leaving the rest
    of the body to a background drain, and raises :class:`UpstreamFailure` for a stream that
    breaks before it. ``on_unknown`` hears of each event type dropped as outside the grammar;
    ``usage`` is kept up to date with the usage the events say."""
    pending = bytearray()
    check = EventStreamCheck(upstream, usage)
    while True:
        chunk = await response.read_chunk()
        if not chunk:
            break
        if not pending and chunk.endswith(b"\n\n"):  # whole events (it ends on a blank line), as a read
            events = check.feed(chunk)  # nearly always brings them: no copy through the buffer
        else:
            scanned = len(pending) - 3  # the new bytes, and a separator that they may complete
            pending += chunk
            cut = sse_complete_prefix(pending, scanned)
            if not cut:
                if len(pending) > MAX_SSE_EVENT_BYTES:
                    raise UpstreamFailure(f"upstream sent an SSE event larger than {MAX_SSE_EVENT_BYTES} bytes")
                yield []
                continue
            events = check.feed(bytes(pending[:cut]))
            del pending[:cut]
        while check.unknown and on_unknown is not None:
            on_unknown(check.unknown.pop())
        yield events
        if check.finished:  # whatever follows message_stop is not relayed
            response.drain()
            return
    if pending.strip() and not response.aborted:  # the upstream's last event without its blank line, if whole
        yield check.feed(bytes(pending) + b"\n\n")
    if not check.finished:
        raise UpstreamFailure("the stream ended before message_stop")


async def _read_unless_said(response: UpstreamResponse, said_end: bool) -> bytes:
    """The next piece of an answer's body; its end (b"") where the body breaks after the upstream
    said the answer ended (its finish reason came, only ``[DONE]`` or the body's end were to
    follow), so that a whole answer is not ended as broken."""
    try:
        return await response.read_chunk()
    except UpstreamFailure:
        if said_end:
            return b""
        raise


def _with_verbatim(chunks: List[bytes], events: List[Event]) -> List[Event]:
    """A batch of events with the upstream's own chunks they were read from before them, if any."""
    return [Event(VERBATIM, {"chunks": chunks})] + events if chunks else events


async def openai_events(response: UpstreamResponse, translator: OpenAIStreamTranslator,
                        native: Optional[NativeChunks] = None) -> AsyncIterator[List[Event]]:
    """A Chat Completions chunk stream as Anthropic events, one batch per upstream read. Ends with
    the closing events, or raises :class:`UpstreamFailure` for a stream that broke before it finished.
    With ``native``, each batch carries the chunks a Chat Completions client gets as they came."""
    decoder = SSEDecoder()
    chunks: List[bytes] = []
    while True:
        chunk = await _read_unless_said(response, translator.saw_finish)
        if not chunk:
            if translator.saw_finish or translator.finished:
                yield _with_verbatim(native.end() if native else [], translator.finish())
                return
            raise UpstreamFailure("the stream ended before the answer finished")
        out: List[Event] = []
        texts = decoder.feed_data(chunk)
        for data, parsed in zip(texts, loads_each(texts)):
            if parsed is None:  # not the usual chunk: the end, a keep-alive, or one to decode the careful way
                data = data.strip()
                if data == "[DONE]":
                    chunks += native.end() if native else []
                    out += translator.finish()
                    continue
                if not data:
                    continue  # an empty keep-alive event
                try:
                    parsed = loads_strict(data)
                except ValueError:
                    raise UpstreamFailure(f"upstream sent a chunk that is not JSON: {excerpt(data, 100)!r}") from None
            if type(parsed) is not dict:
                raise UpstreamFailure(f"upstream sent a chunk that is not a JSON object: {excerpt(data, 100)!r}")
            translator.feed_into(out, parsed)
            if native is not None and not translator.finished:
                chunks += native.feed(parsed, data)
        translator.end_read()
        if translator.finished and native is not None:
            chunks += native.end()
        yield _with_verbatim(chunks, out)
        chunks = []
        if translator.finished:
            response.close()
            return


async def gemini_events(response: UpstreamResponse, translator: GeminiStreamTranslator,
                        native: Optional[NativeChunks] = None) -> AsyncIterator[List[Event]]:
    """A Gemini ``alt=sse`` stream as Anthropic events, one batch per upstream read. Gemini sends
    no ``[DONE]``: the body's end finishes the answer (its last event taken even without its blank
    line). An error Gemini writes into the stream as a bare JSON body (no ``data:`` lines) ends it
    with an error event."""
    decoder, stray = SSEDecoder(), StrayLines()
    chunks: List[bytes] = []

    def translate(texts: List[str]) -> List[Event]:
        out: List[Event] = []
        for data, parsed in zip(texts, loads_each(texts)):
            if parsed is None:  # not the usual chunk: a keep-alive, or one to decode the careful way
                data = data.strip()
                if not data:
                    continue
                try:
                    parsed = loads_strict(data)
                except ValueError:
                    raise UpstreamFailure(f"upstream sent a chunk that is not JSON: {excerpt(data, 100)!r}") from None
            for item in parsed if type(parsed) is list else (parsed,):
                if type(item) is not dict:
                    raise UpstreamFailure(f"upstream sent a chunk that is not a JSON object: {excerpt(data, 100)!r}")
                translator.feed_into(out, item)
                if native is not None and not translator.finished:
                    chunks.extend(native.feed(item, data if item is parsed else _COMPACT_JSON.encode(item)))
        translator.end_read()
        return out

    while True:
        chunk = await _read_unless_said(response, translator.started and translator.said_end)
        if not chunk:
            out = translate(decoder.feed_data(b"\n\n"))
            stray.end()
            if stray.text.strip() and not translator.finished:
                out += translator.feed(stray.error())
            if not translator.finished and translator.unfinished:
                raise UpstreamFailure("the stream ended before the answer finished (no finishReason)")
            if not translator.started:
                raise UpstreamFailure("the stream ended before its first event")
            chunks += native.end() if native else []
            yield _with_verbatim(chunks, out + translator.finish())
            return
        out = translate(decoder.feed_data(chunk))
        if stray.feed(chunk) and not translator.finished:
            out += translator.feed(stray.error())
        if translator.finished and native is not None:
            chunks += native.end()
        yield _with_verbatim(chunks, out)
        chunks = []
        if translator.finished:
            response.close()
            return


#: Events an answer's head may hold before its first content (message_start, then pings while
#: the model thinks, one every few seconds): more is a stream that will say nothing, and the head
#: is held in memory until it commits (10,000 pings are about 4 MB of event objects).
MAX_HEAD_EVENTS = 10_000


async def first_events(events: AsyncIterator[List[Event]]) -> List[Event]:
    """The head of an answer: its events up to the first one past ``message_start`` (and pings).
    Nothing reaches the client before it, so a stream that fails by then (an error event, a first
    event that is not ``message_start``, an end) raises and the attempt can still be retried."""
    head: List[Event] = []
    async for batch in events:
        head += batch
        if any(event.name not in ("message_start", "ping", VERBATIM) for event in batch):
            break
        if len(head) > MAX_HEAD_EVENTS:
            raise UpstreamFailure(f"upstream sent {len(head)} events without content")
    named = [event for event in head if event.name != VERBATIM]
    for event in named:
        if event.name == "error":
            raise stream_error(event.data)
    if not named:
        raise UpstreamFailure("the stream ended before its first event")
    if named[0].name not in ("message_start", "ping"):
        raise UpstreamFailure(f"upstream's stream began with a {excerpt(named[0].name, 40)!r} event, not message_start")
    return head


async def accumulate_events(events: AsyncIterator[List[Event]]) -> Dict[str, Any]:
    """A whole answer's events as the one Message they describe (their data as it was decoded)."""
    accumulator = MessageAccumulator()
    async for batch in events:
        for event in batch:  # (a run of deltas as the one delta it amounts to)
            if event.name != VERBATIM:
                accumulator.add(event.name, event.data)
    return accumulator.result()


class _IdleWatch:
    """Closes an upstream response once ``timeout_s`` pass without an event (``saw_event()``
    says one came), so a relay waiting on a read ends then, whatever trickles in meanwhile (a
    byte of an event, comments, pings, chunks that translate to nothing). One timer per stream, moved
    on lazily: it fires at most once per ``timeout_s``, not once per event."""

    def __init__(self, response: UpstreamResponse, timeout_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.response = response
        self.timeout_s = timeout_s
        self.last_event = self.loop.time()
        self.expired = False
        self._timer = self.loop.call_at(self.last_event + timeout_s, self._check)

    def saw_event(self) -> None:
        self.last_event = self.loop.time()

    def _check(self) -> None:
        due = self.last_event + self.timeout_s
        if self.loop.time() < due:
            self._timer = self.loop.call_at(due, self._check)
            return
        self.expired = True
        self.response.close()

    def cancel(self) -> None:
        self._timer.cancel()


def _error_event_words(events: List[Event]) -> Optional[str]:
    """The message of the ``error`` event that ends a batch, if it does (from its data): nothing
    follows an error event (the check drops what does, the translators finish with it)."""
    if not events or events[-1].name != "error":
        return None
    error = events[-1].data.get("error")
    return str(error.get("message")) if isinstance(error, dict) else "the stream ended with an error event"


async def relay_events(head: List[Event], events: AsyncIterator[List[Event]], response: UpstreamResponse,
                       upstream: str, observe: Optional[Callable[[List[Event]], None]] = None,
                       rewrite: Optional[Callable[[List[Event]], List[Event]]] = None,
                       transform: Optional[Callable[[bytes], bytes]] = None,
                       on_end: Optional[Callable[[], None]] = None,
                       on_error: Optional[Callable[[str], None]] = None,
                       encoder: StreamEncoder = ANTHROPIC_ENCODER) -> AsyncIterator[bytes]:
    """Relay an answer's events to the client as they come: the head, then each batch (seen by
    ``observe``, its events rewritten by ``rewrite``, encoded once by the client's ``encoder``,
    the Anthropic bytes rewritten by ``transform``: :func:`_encoded_batch`), and no more than
    ``timeout_s`` without an event (:class:`_IdleWatch`); pings, where the upstream sends none of its
    own, are the shell's (:class:`_KeepAlive`), so a read here is one plain wait. A stream that breaks ends
    with the encoder's error after its last whole event, so the client never sees half an event;
    the upstream connection is closed (or drained) at the end. ``on_error`` hears the words of an
    error that ends the stream, the upstream's own error event included."""
    idle = _IdleWatch(response, response.timeout_s)
    iterator = events.__aiter__()
    batch = head
    del head  # once relayed, the head (message_start's decoded data) is not held for the whole stream
    try:
        while True:
            if batch:
                has_event = holds_content(batch)
                if has_event:
                    idle.saw_event()
                if observe is not None:
                    observe(batch)
                if on_error is not None:
                    words = _error_event_words(batch)
                    if words is not None:
                        on_error(words)
                for part in _encoded_batch(batch if rewrite is None else rewrite(batch), encoder, transform):
                    yield part
                if has_event:  # the time a slow client took to take it is not the upstream's silence
                    idle.saw_event()
            batch = await iterator.__anext__()
    except StopAsyncIteration:
        pass
    except AgproxyError as exc:
        if response.abandoned and not idle.expired:
            return  # its client left, cutting the read short (the access line says so): nothing broke upstream
        message = f"sent no event for {response.timeout_s:g} s (timeout_s)" if idle.expired else exc.message
        logging.getLogger("agproxy").warning("the stream of upstream %r broke after it began: %s", upstream, message)
        if on_error is not None:
            on_error(f"upstream {upstream!r}: {message}")
        yield encoder.error("api_error" if idle.expired else exc.error_type, f"upstream {upstream!r}: {message}")
    except Exception as exc:  # a defect in agproxy: the client still gets an ending, the log the traceback
        logging.getLogger("agproxy").exception("relaying the stream of upstream %r failed", upstream)
        if on_error is not None:
            on_error(f"agproxy failed relaying upstream {upstream!r}: {type(exc).__name__}")
        yield encoder.error("api_error", f"agproxy failed relaying upstream {upstream!r}: {type(exc).__name__}")
    finally:
        idle.cancel()
        response.close()
        if on_end is not None:
            on_end()


def _both(first: Callable[[List[Event]], None],
          second: Optional[Callable[[List[Event]], None]]) -> Callable[[List[Event]], None]:
    """One observer of relayed batches that calls two (the second may be None)."""
    if second is None:
        return first

    def observe(batch: List[Event]) -> None:
        first(batch)
        second(batch)
    return observe


def _encoded_batch(batch: List[Event], encoder: StreamEncoder,
                   transform: Optional[Callable[[bytes], bytes]]) -> Iterator[bytes]:
    """A batch as the client gets it, in the parts of :meth:`StreamEncoder.encode_parts`.
    ``transform`` (the :class:`DeltaRedactor`) reads Anthropic bytes: another dialect's encoder
    gets the events it wrote anew only where it changed some (it gives back the very bytes it was
    given when it changed nothing, as it nearly always does)."""
    if encoder is ANTHROPIC_ENCODER:
        data = encode_events(batch)
        return iter((data if transform is None else transform(data),))
    batch = single_events(batch)  # the encoder reads each delta's data
    if transform is not None:
        data = encode_events(batch)
        redacted = transform(data)
        if redacted is not data:
            batch = [Event(event.event, loads_strict(event.data)) for event in SSEDecoder().feed(redacted)]
    return encoder.encode_parts(batch)


#: What is read of an answer after its message_stop before the connection is cut instead.
_AFTER_STOP_BYTES = 65536
_AFTER_STOP_S = 0.5


#: Drains running after their answers went out (held here: the loop keeps only weak references).
_DRAINING: Set[asyncio.Future] = set()



async def _drain_after_stop(response: UpstreamResponse) -> None:
    """Read the end of a body whose message is complete, so that its connection can be reused
    (the end of a chunked body often comes in a read of its own); more than a little, or an end
    that does not come at once, is cut."""

    deadline = _Deadline(response, _AFTER_STOP_S, force=True)
    extra = 0
    try:
        while extra < _AFTER_STOP_BYTES:
            chunk = await response.read_chunk()
            if not chunk:
                return
            extra += len(chunk)
        response.close(force=True)
    except UpstreamFailure:  # the message is whole; only the connection is lost
        response.close(force=True)
    finally:
        deadline.cancel()


async def _iterate(items: Iterable[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


# =====================================================================================
# 12. Operations
#     What reads the request records (the metrics and their registry, the status page's board,
#     the usage ledger) and the status page's HTML, logging set-up (handlers are attached only
#     here, called from main()), the config watcher, the state file, `check`.
# =====================================================================================

# -- metrics (GET /metrics): a small registry with bounded labels, and what fills it ---------------

#: Routes polled all day (the status page's data every few seconds, scrapers, health checks): their
#: access lines are written at DEBUG when they go well.
QUIET_ROUTES = frozenset({"status", "metrics", "healthz"})
#: The Content-Type of Prometheus' text exposition format, version 0.0.4.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Values one label of one metric takes: the first this many seen, then :data:`OTHER_LABEL`. Model
#: names come from clients, and each new value is a series that Prometheus keeps: unbounded, one
#: client could blow up its memory (and this page). Real traffic has a few dozen models.
MAX_LABEL_VALUES = 100
OTHER_LABEL = "other"
#: Label-value combinations (as a record has them) a metric remembers the series of, so that a
#: request costs one dict lookup per metric; past this (clients naming ever new models, all of
#: them "other" by then) a series is looked up label by label. Real traffic remembers a few dozen;
#: a client naming a new 200-character model each time fills it with about half a MB per metric.
MAX_REMEMBERED_SERIES = 1024
#: Request durations, in seconds: a model list or a token count takes milliseconds, a long answer
#: minutes (timeout_s defaults to 600).
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: Time to first token, in seconds: a local model starts in tens of milliseconds, a hosted one in
#: half a second to a few seconds, a long prompt (a 200k-token context) or an upstream's queue
#: in tens of seconds to two minutes; finer steps where most answers start (0.25 .. 8 s).
TTFT_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
#: The states ``agproxy_account_state`` reports, one of them 1 for each account.
ACCOUNT_GAUGE_STATES = ("ready", "rate_limited", "rejected_key", "busy")
#: ``agproxy_tokens_total``'s directions, and the record's counts they are (input_tokens: input, ...)
_TOKEN_DIRECTIONS = tuple((name[:-len("_tokens")], name) for _, name in USAGE_FIELDS)
_LABEL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})


def metric_number(value: float) -> str:
    """A sample value as the exposition format writes it (``+Inf``; whole numbers without ``.0``)."""
    if value == math.inf:
        return "+Inf"
    if isinstance(value, int) or (value.is_integer() and abs(value) < 2 ** 53):
        return str(int(value))
    return repr(value)


def label_pairs(names: Sequence[str], values: Sequence[str]) -> str:
    """``{name="value",...}`` with each value escaped (backslash, quote, newline); "" for no labels."""
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{v.translate(_LABEL_ESCAPES)}"' for n, v in zip(names, values)) + "}"


class LabelValues:
    """The values one label of one metric shows: each value as first seen, made safe once (secrets
    hidden, text that is not UTF-8 replaced), the first :data:`MAX_LABEL_VALUES` of them, then
    :data:`OTHER_LABEL` for every later one. A value seen before costs one dict lookup."""

    def __init__(self, shown: Callable[[str], str]) -> None:
        self._shown = shown
        self._values: Dict[str, str] = {}

    def __call__(self, value: str) -> str:
        shown = self._values.get(value)
        if shown is not None:
            return shown
        if len(self._values) >= MAX_LABEL_VALUES:
            return OTHER_LABEL  # not kept: a client naming a million models costs nothing here
        shown = self._shown(value.encode("utf-8", "replace").decode("utf-8"))
        self._values[value] = shown
        return shown


class MetricFamily:
    """One metric: its name, type, help and labels, and its series (label values -> value)."""

    def __init__(self, name: str, kind: str, help_text: str, labels: Sequence[str] = (),
                 shown: Callable[[str], str] = str) -> None:
        self.name, self.kind, self.help_text, self.labels = name, kind, help_text, tuple(labels)
        self._bounds = tuple(LabelValues(shown) for _ in self.labels)
        self._keys: Dict[Tuple[str, ...], Tuple[str, ...]] = {}
        self.series: Dict[Tuple[str, ...], Any] = {}

    def key(self, values: Tuple[str, ...]) -> Tuple[str, ...]:
        """The series of these label values, each bounded and made safe."""
        key = self._keys.get(values)
        if key is None:
            key = tuple([bound(value) for bound, value in zip(self._bounds, values)])
            if len(self._keys) < MAX_REMEMBERED_SERIES:
                self._keys[values] = key
        return key

    def render(self, out: List[str]) -> None:
        """Append its HELP, TYPE and sample lines."""
        out.append(f"# HELP {self.name} {self.help_text}\n# TYPE {self.name} {self.kind}\n")
        for values, value in self.series.items():
            out.append(f"{self.name}{label_pairs(self.labels, values)} {metric_number(value)}\n")


class CounterFamily(MetricFamily):
    """A counter (its name ends in ``_total``)."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (),
                 shown: Callable[[str], str] = str) -> None:
        super().__init__(name, "counter", help_text, labels, shown)

    def inc(self, values: Tuple[str, ...], amount: float = 1) -> None:
        key = self.key(values)
        self.series[key] = self.series.get(key, 0) + amount


class GaugeFamily(MetricFamily):
    """A gauge set at scrape time; label values past the bound share :data:`OTHER_LABEL`, their values
    combined by ``combine`` (a sum by default)."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (), shown: Callable[[str], str] = str,
                 combine: Callable[[float, float], float] = lambda a, b: a + b) -> None:
        super().__init__(name, "gauge", help_text, labels, shown)
        self._combine = combine

    def set(self, values: Tuple[str, ...], value: float) -> None:
        key = self.key(values)
        self.series[key] = value if key not in self.series else self._combine(self.series[key], value)


class HistogramFamily(MetricFamily):
    """A histogram over fixed ``buckets`` (upper bounds, seconds): per series, the count in each
    bucket (not yet cumulative), the count past the last, the sum."""

    def __init__(self, name: str, help_text: str, buckets: Sequence[float], labels: Sequence[str] = (),
                 shown: Callable[[str], str] = str) -> None:
        super().__init__(name, "histogram", help_text, labels, shown)
        self.buckets = tuple(buckets)

    def observe(self, values: Tuple[str, ...], value: float) -> None:
        key = self.key(values)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = [0] * (len(self.buckets) + 1) + [0.0]
        series[bisect.bisect_left(self.buckets, value)] += 1
        series[-1] += value

    def render(self, out: List[str]) -> None:
        out.append(f"# HELP {self.name} {self.help_text}\n# TYPE {self.name} histogram\n")
        names = self.labels + ("le",)
        for values, series in self.series.items():
            cumulative = 0
            for bound, count in zip(self.buckets + (math.inf,), series):
                cumulative += count
                out.append(f"{self.name}_bucket{label_pairs(names, values + (metric_number(bound),))} {cumulative}\n")
            pairs = label_pairs(self.labels, values)
            out.append(f"{self.name}_sum{pairs} {metric_number(series[-1])}\n{self.name}_count{pairs} {cumulative}\n")


def account_gauge_state(state: AccountState, account: Account, now: float) -> str:
    """The :data:`ACCOUNT_GAUGE_STATES` name of an account now: its key rejected (or out of credit),
    resting for any model (rate_limited, a refused model too), at its ``max_concurrency``, or ready."""
    if state.key_rejected(now):
        return "rejected_key"
    if state.resting_until > now:
        return "rate_limited"
    if account.max_concurrency and state.in_flight >= account.max_concurrency:
        return "busy"
    return "ready"


def process_metrics(stat: str, boot_stat: str, limits: str, open_fds: int, page_bytes: int,
                    ticks_per_s: int) -> List[Tuple[str, str, str, float]]:
    """The standard ``process_*`` metrics (name, type, help, value) from the text of
    ``/proc/self/stat``, ``/proc/stat`` and ``/proc/self/limits``; those the text lacks are left out."""
    fields = stat[stat.rfind(")") + 2:].split()  # after the command name, which may hold spaces
    metrics: List[Tuple[str, str, str, float]] = []
    if len(fields) > 21:
        metrics += [
            ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
             (int(fields[11]) + int(fields[12])) / ticks_per_s),
            ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", int(fields[20])),
            ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
             int(fields[21]) * page_bytes)]
        boot = re.search(r"^btime (\d+)$", boot_stat, re.MULTILINE)
        if boot:
            metrics.append(("process_start_time_seconds", "gauge", "Start time of the process since unix epoch "
                            "in seconds.", int(boot.group(1)) + int(fields[19]) / ticks_per_s))
    metrics.append(("process_open_fds", "gauge", "Number of open file descriptors.", open_fds))
    most = re.search(r"^Max open files\s+(\d+)", limits, re.MULTILINE)
    if most:
        metrics.append(("process_max_fds", "gauge", "Maximum number of open file descriptors.", int(most.group(1))))
    return metrics


def _read_process_metrics() -> List[Tuple[str, str, str, float]]:
    """:func:`process_metrics` of this process, read from ``/proc`` (none where there is no ``/proc``)."""
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
        with open("/proc/stat") as f:
            boot_stat = f.read()
        with open("/proc/self/limits") as f:
            limits = f.read()
        open_fds = len(os.listdir("/proc/self/fd"))
        return process_metrics(stat, boot_stat, limits, open_fds, os.sysconf("SC_PAGE_SIZE"),
                               os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError):  # no /proc (macOS, Windows), or one we cannot read: no process_* metrics
        return []


class Metrics:
    """What ``GET /metrics`` shows: counters and histograms filled from each request's record
    (:meth:`read`, one of ``Server.record_readers``) and from the lessons learned, and gauges read
    when the page is asked for (:meth:`page`). Every label value is bounded (:class:`LabelValues`)
    and passes through ``shown`` (the redactor) once, when first seen."""

    def __init__(self, shown: Callable[[str], str]) -> None:
        self.shown = shown
        self.requests = CounterFamily("agproxy_requests_total", "Requests answered, by route, status, upstream "
                                      "and model (as asked).", ("route", "status", "upstream", "model"), shown)
        self.attempts = CounterFamily("agproxy_upstream_attempts_total", "Attempts at an upstream, by account and "
                                      "outcome.", ("upstream", "account", "outcome"), shown)
        self.duration = HistogramFamily("agproxy_request_duration_seconds", "Time from a request's head to the end "
                                        "of its answer.", DURATION_BUCKETS_S, ("route",), shown)
        self.ttft = HistogramFamily("agproxy_time_to_first_token_seconds", "Time from a request's head to the first "
                                    "events of an upstream's streamed answer.", TTFT_BUCKETS_S, ("upstream", "model"),
                                    shown)
        self.tokens = CounterFamily("agproxy_tokens_total", "Tokens the upstreams counted, by direction (input, "
                                    "output, cache_read, cache_write).",
                                    ("upstream", "account", "model", "client", "direction"), shown)
        self.lessons = CounterFamily("agproxy_lessons_total", "What agproxy learned an upstream rejects: a field, "
                                     "a beta, a smaller context window.", ("upstream", "kind"), shown)
        # a stream's status is said with its first events: one that an error ends later is a 200 in
        # agproxy_requests_total, and counted here as well, so that an error rate can see it
        self.broken = CounterFamily("agproxy_streams_failed_total", "Streamed answers that began (status 200) and "
                                    "were ended by an error event: the upstream's, a break, a timeout.",
                                    ("upstream", "model"), shown)
        # a client's own limit refusing a request (a 429 with no upstream), never an upstream's 429
        self.limited = CounterFamily("agproxy_client_limited_total", "Requests refused (429) because their "
                                     "client was over one of its own limits in agproxy's config: max_concurrency, "
                                     "requests_per_minute, tokens_per_day.", ("client", "limit"), shown)
        #: the bound of the sanitizer's change kinds, kept across scrapes so the first 100 stay theirs
        self._changes = LabelValues(shown)

    def read(self, record: RequestRecord) -> None:
        """Count one request whose answer has ended."""
        self.requests.inc((record.route, str(record.status), record.upstream, record.model))
        for attempt in record.attempts:
            self.attempts.inc((attempt.upstream, attempt.account, attempt.outcome))
        if record.ended is not None:
            self.duration.observe((record.route,), record.ended - record.started)
        if record.local or not record.attempts:
            return  # answered here (warmup, demo) or refused: no upstream took part
        if record.stream and record.status < 400 and record.error:
            self.broken.inc((record.upstream, record.model))
        if record.stream and record.first_byte is not None and record.attempts[-1].outcome == "ok":
            # streams only: the first bytes of a JSON answer (or a token count) are its last
            self.ttft.observe((record.upstream, record.model), record.first_byte - record.started)
        client = record.client or ""
        for direction, field in _TOKEN_DIRECTIONS:
            count = getattr(record, field)
            if count:
                self.tokens.inc((record.upstream, record.account, record.model, client, direction), count)

    def learned(self, upstream: str, lessons: Iterable[str]) -> None:
        """Count lessons :meth:`LearnedRejections.learn` took (``beta:`` names a beta, else a field)."""
        for lesson in lessons:
            self.lessons.inc((upstream, "beta" if lesson.startswith("beta:") else "field"))

    def learned_window(self, upstream: str) -> None:
        """Count a context window learned from an upstream's error."""
        self.lessons.inc((upstream, "window"))

    def client_limited(self, client: str, limit: str) -> None:
        """Count a request refused because its client was over one of its own limits."""
        self.limited.inc((client, limit))

    def page(self, pool: AccountPool, now: float, streams: int, connections: int,
             counters: Dict[str, int]) -> bytes:
        """The whole page: the counters, the accounts' states now, the open streams and connections,
        the sanitizer's changes (``counters``' ``stage:kind`` entries), build and process facts."""
        shown = self.shown
        state = GaugeFamily("agproxy_account_state", "1 for the state each account is in now (ready, rate_limited: "
                            "resting for any model, rejected_key, busy: at its max_concurrency), else 0.",
                            ("upstream", "account", "state"), shown)
        rest = GaugeFamily("agproxy_account_rest_until_seconds", "Unix time the account's last rest ends (0: none).",
                           ("upstream", "account"), shown, combine=max)
        for upstream in pool.upstreams.values():
            for account in upstream.accounts:
                account_state = pool.state(upstream, account)
                now_in = account_gauge_state(account_state, account, now)
                for name in ACCOUNT_GAUGE_STATES:
                    state.set((upstream.name, account.name, name), int(name == now_in))
                until = account_state.resting_until
                rest.set((upstream.name, account.name), until if until > now else 0)
        changes = CounterFamily("agproxy_sanitizer_changes_total", "What agproxy changed in requests for their "
                                "upstream, by stage:kind.", ("change",))
        for name, count in counters.items():
            if ":" in name:
                changes.inc((self._changes(name),), count)
        python = ".".join(str(part) for part in sys.version_info[:3])
        families: List[MetricFamily] = [self.requests, self.attempts, self.duration, self.ttft, self.tokens, state,
                                        rest, changes, self.lessons, self.broken, self.limited]
        for name, value, help_text in (("agproxy_streams_active", streams, "Streaming answers being written now."),
                                       ("agproxy_connections_active", connections, "Open client connections.")):
            families.append(GaugeFamily(name, help_text))
            families[-1].set((), value)
        families.append(GaugeFamily("agproxy_build_info", "agproxy's version and Python's; always 1.",
                                    ("version", "python")))
        families[-1].set((__version__, python), 1)
        for name, kind, help_text, value in _read_process_metrics():
            families.append(MetricFamily(name, kind, help_text))
            families[-1].series[()] = value
        out: List[str] = []
        for family in families:
            family.render(out)
        return "".join(out).encode("utf-8")


# -- the status page: GET /agproxy, and its data at GET /v1/agproxy/status ----------------------

#: Requests the status page lists, newest first: a screenful, kept as a ring of their records.
STATUS_LAST_REQUESTS = 50
#: Failed requests (status 400 or more) it keeps apart, so that a run of successes does not push them off.
STATUS_LAST_ERRORS = 20
#: Accounts and models whose counts today the page shows, those with the most tokens: clients name
#: the models, and one inventing names must not grow the page's data without bound.
STATUS_MAX_TODAY_KEYS = 100
#: Where the page reads its data (relative to itself: agproxy may sit behind a path prefix).
STATUS_DATA_PATH = "/v1/agproxy/status"
#: The page is all inline: the policy lets it load nothing from elsewhere, its script talk to agproxy
#: only, and no other site frame it (it has a key form).
STATUS_PAGE_HEADERS: Headers = [
    ("Content-Type", "text/html; charset=utf-8"),
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                                "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
                                "frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
]


def asks_for_status_page(request: Request) -> bool:
    """Whether a request asks for the status page's HTML, which any client may load in every
    ``auth_mode`` (it holds no data; its data, ``/v1/agproxy/status``, needs the key): ``/agproxy``,
    or ``GET /`` from a browser (an Accept naming text/html; Claude Code's probes of ``/`` keep their JSON)."""
    if request.path == "/agproxy":
        return True
    return request.path == "/" and request.method == "GET" and "text/html" in (request.header("accept") or "").lower()


def _utc_day(moment: float) -> str:
    return _iso_time(moment)[:10]


class StatusBoard:
    """What the status page shows besides the live state of the accounts: the last requests and
    the last failures (bounded rings of their records), and today's requests and tokens per account
    and per model. It reads request records (``Server.record_readers``) and decodes no answer; the
    caller passes the time in."""

    def __init__(self, started_at: float, ledger: UsageLedger, hide: Callable[[str], str] = str) -> None:
        self.started_at = started_at
        self.ledger = ledger  # what today's counts are read from
        #: what each listed word passes through (the redactor's text: a client's path or model, an
        #: upstream's words, may hold something shaped like a key)
        self.hide = hide
        self.last: collections.deque = collections.deque(maxlen=STATUS_LAST_REQUESTS)
        self.errors: collections.deque = collections.deque(maxlen=STATUS_LAST_ERRORS)

    def read(self, record: RequestRecord) -> None:
        """Take one ended request: listed if it named a model or failed (agproxy's own routes and
        Claude Code's probes are not listed, nor the page's own polls: the page shows what they
        meet itself)."""
        if record.path == STATUS_DATA_PATH or (not record.model and record.status < 400):
            return
        # its fields are made, its words hidden and its time written when the page is read
        self.last.appendleft(record)
        if record.status >= 400:
            self.errors.appendleft(record)

    def _listed(self, records: Iterable[RequestRecord]) -> List[Dict[str, Any]]:
        """The page's rows of ``records`` (:meth:`read`'s): their fields, every word through ``hide``
        (with the keys known now, not at each request's end: the page is read far less often than
        requests end), the time in ISO 8601."""
        rows = []
        for record in records:
            row = {name: self.hide(value) if isinstance(value, str) else value
                   for name, value in record.fields().items()}
            row["time"] = _iso_time(record.started_at)
            rows.append(row)
        return rows

    def today(self, now: float) -> Dict[str, Any]:
        """Today's (UTC) requests, errors and tokens per account and per model, the most tokens
        first, from the usage ledger: :data:`STATUS_MAX_TODAY_KEYS` rows of each, then the rest
        added up under ``(other)``."""
        day = _utc_day(now)

        def ranked(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
            rows = sorted(rows, key=lambda r: (-sum(r[n] for n in USAGE_COUNTS[2:]), -r["requests"]))
            if len(rows) <= STATUS_MAX_TODAY_KEYS:
                return rows
            other = {key: "(other)" for key in rows[0] if key not in USAGE_COUNTS}
            other.update({n: sum(r[n] for r in rows[STATUS_MAX_TODAY_KEYS:]) for n in USAGE_COUNTS})
            return rows[:STATUS_MAX_TODAY_KEYS] + [other]

        return {"day": day, "accounts": ranked(self.ledger.rows(day, day, ("upstream", "account"))),
                "models": ranked(self.ledger.rows(day, day, ("model",))),
                "clients": ranked([r for r in self.ledger.rows(day, day, ("client",)) if r["client"]])}

    def snapshot(self, now: float, in_flight: int, upstreams: Sequence[Upstream], pool: AccountPool,
                 learned: LearnedRejections, windows: LearnedWindows, counters: Dict[str, int]) -> Dict[str, Any]:
        """The page's data: version, uptime, requests in flight, every upstream and account with its
        state, reason and the seconds its rest has left (the page counts down from them), the last
        requests and failures, today, and what agproxy learned and changed."""
        described = {(d["upstream"], d["account"]): d for d in pool.describe(now)}
        return {
            "version": __version__, "started_at": _iso_time(self.started_at),
            "uptime_s": round(max(0.0, now - self.started_at), 1), "in_flight": max(0, in_flight),
            "upstreams": [{"name": u.name, "kind": u.kind, "accounts": [
                dict(described[(u.name, a.name)], rest_left_s=round(max(0.0, pool.state(u, a).resting_until - now), 1))
                for a in u.accounts]} for u in upstreams],
            "requests": self._listed(self.last), "errors": self._listed(self.errors), "today": self.today(now),
            "lessons": learned.to_json(), "counters": dict(sorted(counters.items())),
            "windows": {name: entry["models"] for name, entry in windows.to_json(upstreams).items()},
        }


#: The status page: one document, its style and script inline, no asset from anywhere (it works
#: offline and inside the .pyz). It polls /v1/agproxy/status every few seconds and builds every
#: node with textContent (model names and error words come from clients and upstreams). With auth
#: on it asks for the key once and keeps it in sessionStorage: the tab keeps it across reloads, while
#: nothing keeps it on disk past the tab or shares it with another tab or site (localStorage would
#: keep it on disk for good; a cookie would be sent by the browser on its own, to any request a
#: foreign page makes). It sends it as ``Authorization: Bearer``, never in a URL.
STATUS_PAGE_HTML = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>agproxy</title><link rel="icon" href="data:,">
<style>
:root{--bg:#f3f4f7;--card:#fff;--ink:#1b1f27;--mute:#68707f;--line:#e3e6ec;--ok:#1a7f4b;--okbg:#e3f5ea;--warn:#9a5b00;
--warnbg:#fdf0d8;--bad:#b42318;--badbg:#fde7e5;--info:#2856b8;--infobg:#e5edfb;--in:#4f7cf0;--out:#12a37a;
--cr:#b28ae8;
--cw:#f0a04f;color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--bg:#12151b;--card:#1b1f27;--ink:#e6e8ee;--mute:#97a0b0;--line:#2b313c;
--ok:#5cd69a;--okbg:#173427;--warn:#f2c063;--warnbg:#3a2e14;--bad:#ff8a80;--badbg:#42201e;--info:#8fb0ff;
--infobg:#1e2a45}}
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,
"Segoe UI",Roboto,sans-serif}header{display:flex;flex-wrap:wrap;align-items:center;gap:6px 16px;padding:12px 20px;
background:var(--card);border-bottom:1px solid var(--line);position:sticky;top:0;z-index:1}
h1{font-size:18px;margin:0;letter-spacing:-.01em}h1
small{font-weight:500;color:var(--mute);font-size:13px;margin-left:6px}
h2{font-size:13px;text-transform:uppercase;letter-spacing:.06em;color:var(--mute);margin:0 0 10px;font-weight:600}
#live{display:flex;align-items:center;gap:6px;color:var(--mute);font-size:13px;margin-left:auto}
.dot{width:8px;height:8px;border-radius:50%;background:var(--ok)}.dot.stale{background:var(--warn)}
.dot.down{background:var(--bad)}
button{font:inherit;border:1px solid
var(--line);background:var(--card);color:var(--ink);border-radius:6px;padding:4px 10px;
cursor:pointer}button.primary{background:var(--info);color:#fff;border-color:var(--info)}
main{padding:16px 20px
28px;display:grid;gap:16px;grid-template-columns:repeat(12,minmax(0,1fr));max-width:1600px;margin:auto}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px;min-width:0}
.tiles{grid-column:1/-1;display:grid;gap:16px;grid-template-columns:repeat(5,minmax(0,1fr))}
.tile .v{font-size:24px;font-weight:650;letter-spacing:-.02em;font-variant-numeric:tabular-nums}
.tile .l{color:var(--mute);font-size:12px;text-transform:uppercase;letter-spacing:.05em}.tile
.s{color:var(--mute);font-size:12px}
#accounts{grid-column:span 5}#today{grid-column:span 7}#requests{grid-column:1/-1}#errors{grid-column:span 7}
#lessons{grid-column:span 5}
.up{margin-bottom:12px}.up:last-child{margin-bottom:0}.up>b{font-size:13px}.up>span{color:var(--mute);font-size:12px;
margin-left:6px}
.acct{display:grid;grid-template-columns:auto 1fr auto;gap:2px 10px;align-items:center;padding:8px 0;border-top:1px
solid var(--line)}
.acct .name{font-weight:550;overflow-wrap:anywhere}.acct
.why{grid-column:2/-1;color:var(--mute);font-size:12px;overflow-wrap:anywhere}
.acct .nums{color:var(--mute);font-size:12px;text-align:right;white-space:nowrap}
.badge{display:inline-block;font-size:11px;font-weight:650;padding:2px
8px;border-radius:999px;text-transform:uppercase;
letter-spacing:.04em;white-space:nowrap}.ok{color:var(--ok);background:var(--okbg)}.warn{color:var(--warn);
background:var(--warnbg)}
.bad{color:var(--bad);background:var(--badbg)}.info{color:var(--info);background:var(--infobg)}
.count{font-variant-numeric:tabular-nums;font-weight:600;color:var(--warn)}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(240px,1fr));gap:18px}.bar{margin:8px 0}
.bar .t{display:flex;justify-content:space-between;gap:8px;font-size:12px}
.bar .t b{font-weight:550;min-width:0;overflow:hidden;
text-overflow:ellipsis;white-space:nowrap}.bar .t span{color:var(--mute);white-space:nowrap}
.bar svg{display:block;width:100%;height:10px;border-radius:3px;background:var(--line)}
.legend{display:flex;flex-wrap:wrap;gap:12px;font-size:12px;color:var(--mute);margin-top:10px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px;vertical-align:-1px}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th{text-align:left;font-size:12px;color:var(--mute);font-weight:600;padding:6px 8px;border-bottom:1px solid
var(--line);white-space:nowrap}
td{padding:6px 8px;border-bottom:1px solid var(--line);white-space:nowrap}tr:last-child td{border-bottom:0}
td.r,th.r{text-align:right}td.m{max-width:260px;overflow:hidden;text-overflow:ellipsis}.sub{color:var(--mute);
font-size:12px}
.err{padding:8px 0;border-top:1px solid var(--line)}.err:first-of-type{border-top:0}.err
.w{overflow-wrap:anywhere;margin-top:2px}
.empty{color:var(--mute);padding:8px 0}code{font:12px
ui-monospace,SFMono-Regular,Menlo,monospace;background:var(--bg);
padding:1px 5px;border-radius:4px;overflow-wrap:anywhere}
#keycard{grid-column:1/-1;max-width:460px;justify-self:center;width:100%}#keycard
form{display:flex;gap:8px;margin-top:10px}
#keycard input{flex:1;font:inherit;padding:6px 10px;border:1px solid
var(--line);border-radius:6px;background:var(--bg);
color:var(--ink);min-width:0}#keynote{color:var(--bad);font-size:13px;margin-top:8px}
[hidden]{display:none!important}
@media (max-width:1000px){#accounts,#today,#errors,#lessons{grid-column:1/-1}
.tiles{grid-template-columns:repeat(6,1fr)}.tile{grid-column:span 2}.tile:nth-child(n+4){grid-column:span 3}}
@media (max-width:640px){main{padding:12px;gap:12px}header{padding:10px 12px}.tiles{gap:10px}
.tile{padding:10px 12px}.tile .v{font-size:20px}.tile .s{display:none}.tile .l{font-size:11px}
.charts{grid-template-columns:minmax(0,1fr)}.wide{display:none}
.acct{grid-template-columns:auto 1fr}.acct .nums{grid-column:2;text-align:left}#requests thead{display:none}
#rows tr{display:grid;grid-template-columns:auto minmax(0,1fr) auto;gap:2px 10px;padding:8px 0;
border-bottom:1px solid var(--line)}#rows tr:last-child{border:0}#rows td{border:0;padding:0;max-width:none}
#rows td.tok{grid-column:1/3;text-align:left;color:var(--mute);font-size:12px}#rows td.tok::before{content:"tokens "}
#rows td.dur{color:var(--mute);font-size:12px}}
</style></head><body>
<header><h1>agproxy<small id="version"></small></h1><div id="live"><span class="dot down" id="dot"></span>
<span id="updated">connecting…</span><button id="forget" hidden>Forget key</button></div></header>
<main>
<section class="card" id="keycard" hidden><h2>agproxy's key</h2><div>This agproxy has auth on: enter its
admin key (<code>admin_api_key</code>, or <code>api_key</code> where there is none) to see its status. It is
kept in this tab only and sent as a header.</div>
<form id="keyform"><input id="key" type="password" autocomplete="off" placeholder="admin key" aria-label="admin key">
<button class="primary">Show status</button></form><div id="keynote"></div></section>
<div class="tiles" id="tiles" hidden>
<div class="card tile"><div class="l">Uptime</div><div class="v" id="uptime">–</div><div class="s"
id="since"></div></div>
<div class="card tile"><div class="l">In flight</div><div class="v" id="inflight">–</div><div class="s">requests
now</div></div>
<div class="card tile"><div class="l">Requests</div><div class="v" id="reqs">–</div><div class="s"
id="errs"></div></div>
<div class="card tile"><div class="l">Tokens</div><div class="v" id="toks">–</div><div class="s"
id="tokio"></div></div>
<div class="card tile"><div class="l">Accounts ready</div><div class="v" id="ready">–</div><div class="s"
id="resting"></div></div>
</div>
<section class="card" id="accounts" hidden><h2>Upstreams and accounts</h2><div id="ups"></div></section>
<section class="card" id="today" hidden><h2>Today (UTC)</h2><div class="charts"><div><div class="sub">per
account</div>
<div id="byacct"></div></div><div><div class="sub">per model</div><div id="bymodel"></div></div><div
id="clientchart" hidden><div class="sub">per client</div><div id="byclient"></div></div></div><div
class="legend">
<span><i style="background:var(--in)"></i>input</span><span><i style="background:var(--out)"></i>output</span>
<span><i style="background:var(--cr)"></i>cache read</span><span><i style="background:var(--cw)"></i>cache
write</span></div></section>
<section class="card" id="requests" hidden><h2>Last requests</h2><div class="scroll"><table><thead><tr>
<th>Time</th><th>Model</th><th class="wide">Account</th><th class="r">Status</th><th class="r">Tokens in / out</th>
<th class="r wide">Cache r / w</th><th class="r wide">TTFT</th><th class="r">Duration</th></tr></thead>
<tbody id="rows"></tbody></table></div></section>
<section class="card" id="errors" hidden><h2>Recent errors</h2><div id="errlist"></div></section>
<section class="card" id="lessons" hidden><h2>Healing lessons</h2><div id="lessonlist"></div></section>
</main>
<script>
"use strict";
const KEY = "agproxy-key", POLL_MS = 3000, $ = id => document.getElementById(id);
let key = sessionStorage.getItem(KEY) || "", data = null, at = 0, timer = 0, failing = "";
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function add(parent, ...kids) { for (const k of kids) parent.appendChild(k); return parent; }
function num(n) {
  n = n || 0;
  if (n < 1000) return String(n);
  if (n < 1e6) return (n / 1e3).toFixed(n < 1e4 ? 1 : 0) + "k";
  return (n / 1e6).toFixed(n < 1e7 ? 2 : 1) + "M";
}
function ms(v) {
  return v === null || v === undefined ? "–" : v < 1000 ? Math.round(v) + " ms" : (v / 1000).toFixed(1) + " s";
}
function span(s) {
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60), x = s % 60;
  const two = v => String(v).padStart(2, "0");
  return d ? d + "d " + h + "h" : h ? h + "h " + two(m) + "m" : m ? m + "m " + two(x) + "s" : x + "s";
}
function clock(iso) { return new Date(iso).toLocaleTimeString([], {hour12: false}); }
const STATES = {ok: ["ready", "ok"], rate_limited: ["rate limited", "warn"], rejected_key: ["key rejected", "bad"],
  out_of_credit: ["out of credit", "bad"], probing: ["probing", "info"], recovering: ["recovering", "info"]};
function statusClass(s) { return s < 400 ? "ok" : s === 499 ? "info" : s < 500 ? "warn" : "bad"; }
function tokens(r) { return r.input_tokens + r.output_tokens + r.cache_read_tokens + r.cache_write_tokens; }

function ask(note) {
  clearTimeout(timer);
  for (const s of document.querySelectorAll("main>section,.tiles")) s.hidden = true;
  $("keycard").hidden = false; $("keynote").textContent = note; $("forget").hidden = true;
  $("dot").className = "dot stale"; $("updated").textContent = "waiting for the key";
  $("key").focus();
}
$("keyform").addEventListener("submit", ev => {
  ev.preventDefault();
  key = $("key").value.trim(); $("key").value = "";
  if (key) { sessionStorage.setItem(KEY, key); poll(); }
});
$("forget").addEventListener("click", () => { key = ""; sessionStorage.removeItem(KEY); ask(""); });

async function poll() {
  clearTimeout(timer);
  if (document.hidden) { timer = setTimeout(poll, POLL_MS); return; }
  let r;
  try {
    r = await fetch("v1/agproxy/status", {headers: key ? {Authorization: "Bearer " + key} : {}, cache: "no-store"});
  } catch (e) {
    failing = "agproxy is not answering"; tick(); timer = setTimeout(poll, POLL_MS); return;
  }
  if (r.status === 401 || (r.status === 403 && key)) {
    if (key) sessionStorage.removeItem(KEY);
    ask(r.status === 403 ? "That key is not agproxy's admin key (a client's key shows no status)." :
        key ? "agproxy refused that key." : ""); key = ""; return;
  }
  if (!r.ok) {
    let words = "HTTP " + r.status;
    try { words += ": " + (await r.json()).error.message; } catch (e) { /* not agproxy's JSON */ }
    failing = words; tick(); timer = setTimeout(poll, POLL_MS); return;
  }
  data = await r.json(); at = Date.now(); failing = "";
  $("keycard").hidden = true; $("forget").hidden = !key;
  render(); tick();
  timer = setTimeout(poll, POLL_MS);
}
document.addEventListener("visibilitychange", () => { if (!document.hidden && $("keycard").hidden) poll(); });

function render() {
  for (const s of document.querySelectorAll("main>section:not(#keycard),.tiles")) s.hidden = false;
  $("version").textContent = "v" + data.version;
  $("since").textContent = "since " + new Date(data.started_at).toLocaleString([], {hour12: false});
  $("inflight").textContent = data.in_flight;
  const t = data.today, sum = {requests: 0, errors: 0, input_tokens: 0, output_tokens: 0, cache_read_tokens: 0,
    cache_write_tokens: 0};
  for (const row of t.models) for (const k in sum) sum[k] += row[k];
  $("reqs").textContent = num(sum.requests);
  $("errs").textContent = "today, " + (sum.errors ? sum.errors + " failed" : "none failed");
  $("toks").textContent = num(tokens(sum));
  $("tokio").textContent = "today: " + num(sum.input_tokens) + " in · " + num(sum.output_tokens) + " out · " +
    num(sum.cache_read_tokens + sum.cache_write_tokens) + " cache";
  renderAccounts(); renderToday(); renderRequests(); renderErrors(); renderLessons();
}

function renderAccounts() {
  const box = $("ups"); box.replaceChildren();
  let all = 0, ready = 0, resting = 0;
  for (const up of data.upstreams) {
    const group = add(el("div", "up"), el("b", "", up.name), el("span", "", up.kind));
    for (const a of up.accounts) {
      all++; if (a.state === "ok") ready++; if (a.rest_left_s > 0) resting++;
      const [label, cls] = STATES[a.state] || [a.state, "info"];
      const row = add(el("div", "acct"), el("span", "badge " + cls, label), el("span", "name", a.account));
      const right = el("span", "nums");
      if (a.rest_left_s > 0) {
        const c = el("span", "count"); c.dataset.until = at + a.rest_left_s * 1000;
        add(right, document.createTextNode("rests "), c);
      } else {
        right.textContent = a.in_flight + " now · " + a.successes + " ok · " + a.failures + " failed";
      }
      row.appendChild(right);
      const models = Object.keys(a.models_resting || {});
      const why = [a.reason, models.length ? "models: " + models.join(", ") : ""].filter(x => x);
      if (why.length && a.state !== "ok") row.appendChild(el("div", "why", why.join(" — ")));
      group.appendChild(row);
    }
    box.appendChild(group);
  }
  $("ready").textContent = ready + " / " + all;
  $("resting").textContent = resting ? resting + " resting" : "none resting";
}

function bars(box, rows, name) {
  box.replaceChildren();
  if (!rows.length) { box.appendChild(el("div", "empty", "no requests yet today")); return; }
  const shown = rows.slice(0, 8), max = Math.max(1, ...shown.map(tokens));
  for (const r of shown) {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 1000 10"); svg.setAttribute("preserveAspectRatio", "none");
    let x = 0;
    for (const [k, color] of [["input_tokens", "--in"], ["output_tokens", "--out"], ["cache_read_tokens", "--cr"],
      ["cache_write_tokens", "--cw"]]) {
      const w = r[k] / max * 1000;
      if (w <= 0) continue;
      const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      for (const [name, value] of [["x", x], ["y", 0], ["width", w], ["height", 10], ["fill", "var(" + color + ")"]])
        rect.setAttribute(name, value);
      const tip = document.createElementNS("http://www.w3.org/2000/svg", "title");
      tip.textContent = k.replace(/_/g, " ") + ": " + r[k]; rect.appendChild(tip);
      svg.appendChild(rect); x += w;
    }
    const label = add(el("div", "t"), el("b", "", name(r)),
      el("span", "", num(tokens(r)) + " tok · " + r.requests + " req" + (r.errors ? ` · ${r.errors} failed` : "")));
    box.appendChild(add(el("div", "bar"), label, svg));
  }
  if (rows.length > shown.length) box.appendChild(el("div", "sub", `and ${rows.length - shown.length} more`));
}
function renderToday() {
  bars($("byacct"), data.today.accounts, r => r.account ? `${r.account} (${r.upstream})` : "answered by agproxy");
  bars($("bymodel"), data.today.models, r => r.model || "(none)");
  const clients = data.today.clients || [];
  $("clientchart").hidden = !clients.length;
  if (clients.length) bars($("byclient"), clients, r => r.client);
}

function renderRequests() {
  const body = $("rows"); body.replaceChildren();
  if (!data.requests.length) {
    const td = el("td", "empty", "No requests yet. Point a client at ANTHROPIC_BASE_URL=" + location.origin);
    td.colSpan = 8; body.appendChild(add(el("tr"), td)); return;
  }
  for (const r of data.requests) {
    const model = el("td", "m", r.model || r.path); model.title = (r.model || r.path) +
      (r.mapped_model && r.mapped_model !== r.model ? " → " + r.mapped_model : "");
    if (r.stream) model.appendChild(el("span", "sub", " stream"));
    const st = add(el("td", "r"), el("span", "badge " + statusClass(r.status), r.status));
    if (r.error) st.title = r.error;
    const who = el("td", "m wide", r.account || r.local || "–");
    if (r.client) who.appendChild(el("span", "sub", " · " + r.client));
    add(body, add(el("tr"), el("td", "", clock(r.time)), model, who, st,
      el("td", "r tok", num(r.input_tokens) + " / " + num(r.output_tokens)),
      el("td", "r wide", num(r.cache_read_tokens) + " / " + num(r.cache_write_tokens)),
      el("td", "r wide", ms(r.ttft_ms)), el("td", "r dur", ms(r.duration_ms))));
  }
}

function renderErrors() {
  const box = $("errlist"); box.replaceChildren();
  if (!data.errors.length) { box.appendChild(el("div", "empty", "No errors since agproxy started.")); return; }
  for (const r of data.errors) {
    const head = add(el("div"), el("span", "badge " + statusClass(r.status), r.status),
      el("span", "sub", "  " + clock(r.time) + " · " + [r.method + " " + r.path, r.model, r.upstream && r.upstream +
        "/" + r.account].filter(x => x).join(" · ")));
    box.appendChild(add(el("div", "err"), head, el("div", "w", r.error || "(no words)")));
  }
}

function renderLessons() {
  const box = $("lessonlist"); box.replaceChildren();
  const items = [];
  for (const [up, l] of Object.entries(data.lessons)) {
    for (const f of l.fields) items.push([up, "strips field", f]);
    for (const b of l.betas) items.push([up, "drops beta", b]);
  }
  for (const [up, models] of Object.entries(data.windows || {}))
    for (const [m, w] of Object.entries(models)) items.push([up, "window of " + m, w + " tokens"]);
  if (!items.length) box.appendChild(el("div", "empty", "Nothing learned: every upstream took requests as sent."));
  for (const [up, what, value] of items)
    box.appendChild(add(el("div", "err"), el("span", "sub", up + " " + what + " "), el("code", "", value)));
  const changes = Object.entries(data.counters);
  if (changes.length) {
    box.appendChild(el("div", "sub", "Changes made to requests since start:"));
    const list = el("div", "legend");
    for (const [k, v] of changes) list.appendChild(el("span", "", k + " × " + v));
    box.appendChild(list);
  }
}

function tick() {
  if (!$("keycard").hidden) return;  // waiting for the key: the header says so, not "live"
  const now = Date.now();
  if (data) {
    $("uptime").textContent = span(data.uptime_s + (now - at) / 1000);
    for (const c of document.querySelectorAll(".count[data-until]")) {
      const left = (Number(c.dataset.until) - now) / 1000;
      c.textContent = left > 0 ? span(left) : "ending";
    }
  }
  const age = data ? Math.round((now - at) / 1000) : 0;
  $("dot").className = "dot" + (failing ? " down" : age > 10 ? " stale" : "");
  if (failing) $("updated").textContent = failing + (data ? " · last update " + span(age) + " ago" : "");
  else if (data) $("updated").textContent = age < 2 ? "live" : "updated " + span(age) + " ago";
}
setInterval(tick, 1000);
poll();
</script></body></html>
"""


# -- the usage ledger (pure: the caller passes the time in) ---------------------------------------

#: The paths (globs) of the requests that generate, in every client protocol, which the usage ledger
#: and the client limits count, refused and failed ones too.
USAGE_PATHS = ("/v1/messages", "/v1/chat/completions", "/v1/responses", "/v1beta/models/*:generateContent",
               "/v1beta/models/*:streamGenerateContent", "/v1/models/*:generateContent",
               "/v1/models/*:streamGenerateContent")
#: What a usage row is counted under, in this order, and what it counts.
USAGE_KEYS = ("day", "upstream", "account", "model", "client")
USAGE_COUNTS = ("requests", "errors", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
USAGE_DEFAULT_GROUP_BY = ("day", "upstream", "account", "model")
#: Days the ledger keeps one by one: a quarter, what a monthly bill is checked against. Older days
#: are merged into one row per month and key (its ``day`` is then ``YYYY-MM``).
LEDGER_DAYS_KEPT = 92
#: Rows the ledger holds at most. Models keep their real names, so a client inventing names could
#: otherwise grow memory and the state file without end. A row costs about 260 bytes of memory and
#: about 120 of state file (compact JSON), under 3 MB at the cap; with every name at its longest
#: escaped (MAX_LEDGER_NAME_BYTES) and every count at 19 digits, well under MAX_STATE_BYTES, past
#: which the file is not read (tests/test_usage.py checks the worst case).
MAX_LEDGER_ROWS = 20000
#: Characters of a name (model, upstream, account, client) a row keeps: real model names are under
#: 60; the cut bounds what one row costs.
MAX_LEDGER_NAME_CHARS = 100
#: What a name may cost in the state file, JSON-escaped: a character outside ASCII is written as up
#: to twelve (``\ud83d\ude00``), so a cut by characters alone let a client's model names of emoji
#: grow the file at the row cap past MAX_STATE_BYTES, which made agproxy refuse its own file.
MAX_LEDGER_NAME_BYTES = 200


def _ledger_name(name: str) -> str:
    """A name as a ledger row keeps it: at most :data:`MAX_LEDGER_NAME_CHARS` characters, and at
    most :data:`MAX_LEDGER_NAME_BYTES` once JSON-escaped."""
    name = name[:MAX_LEDGER_NAME_CHARS]
    if name.isascii() and name.isprintable() and 2 * len(name) <= MAX_LEDGER_NAME_BYTES:
        return name  # the usual name: JSON escapes a printable ASCII character in two bytes at most
    while len(json.dumps(name)) - 2 > MAX_LEDGER_NAME_BYTES:
        name = name[:len(name) * 3 // 4]
    return name


#: Past MAX_LEDGER_ROWS, rows are folded until this share of it is left: a client inventing names
#: then pays for one fold every few thousand rows, not at every request.
_LEDGER_FOLD_TO = 0.9
#: What folded rows count under, in the place of the names folded.
LEDGER_OTHER = "(other)"
#: How the smallest rows of the oldest day are folded, one step after the other until the rows fit:
#: their model, then their account and client as well, then everything.
_LEDGER_FOLDS: Tuple[Callable[[Tuple[str, ...]], Tuple[str, ...]], ...] = (
    lambda key: (key[0], key[1], key[2], LEDGER_OTHER, key[4]),
    lambda key: (key[0], key[1], LEDGER_OTHER, LEDGER_OTHER, LEDGER_OTHER),
    lambda key: (key[0],) + (LEDGER_OTHER,) * 4,
)
#: How often at most new counts are saved to the state file (the save fsyncs): a busy agproxy saves
#: once in this many seconds, not at every request; the shutdown saves the rest.
LEDGER_SAVE_INTERVAL_S = 10.0
#: Largest count a saved row may hold: what a 64-bit reader of the JSON or CSV can take.
_MAX_LEDGER_COUNT = 2**63 - 1
#: Characters of a query parameter's value an error message quotes.
_MAX_QUOTED_PARAMETER = 60
_DAY = _LazyPattern(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MONTH = _LazyPattern(r"[0-9]{4}-[0-9]{2}")
#: A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def utc_day(moment: float) -> str:
    """The UTC day of a wall-clock time, ``YYYY-MM-DD`` (worked out once a day: the ledger asks at
    every request's end)."""
    day = int(moment // 86400)  # POSIX time: every UTC day is 86,400 seconds long
    if _LAST_UTC_DAY[0] != day:
        _LAST_UTC_DAY[:] = [day, (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).isoformat()]
    return _LAST_UTC_DAY[1]


#: The day number :func:`utc_day` wrote last, and what it wrote.
_LAST_UTC_DAY: List[Any] = [None, ""]


def _valid_day(text: str) -> bool:
    if not _DAY.fullmatch(text):
        return False
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _valid_period(text: str) -> bool:
    """A ledger row's ``day``: a day, or a month that older days were merged into."""
    return _valid_day(text) or bool(_MONTH.fullmatch(text)) and _valid_day(text + "-01")


@dataclasses.dataclass(frozen=True)
class UsageQuery:
    """What ``GET /v1/agproxy/usage`` asks for (its parameters, checked and filled in)."""

    from_day: str
    to_day: str
    group_by: Tuple[str, ...]
    format: str  # "json" or "csv"


def parse_usage_query(query: str, today: str, first_day: Optional[str]) -> UsageQuery:
    """``GET /v1/agproxy/usage``'s query string: ``from`` and ``to`` (UTC days; by default the
    ledger's first day, and ``today``), ``group_by`` (comma-separated :data:`USAGE_KEYS`; empty
    for one row of totals) and ``format`` (``json`` or ``csv``). :class:`InvalidRequest` naming the
    parameter for an unknown or repeated one, a bad day, ``from`` after ``to``, an unknown key."""
    given: Dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        shown = json.dumps(name[:_MAX_QUOTED_PARAMETER])
        if name not in ("from", "to", "group_by", "format"):
            raise InvalidRequest(f"unknown parameter {shown} (known: from, to, group_by, format)")
        if name in given:
            raise InvalidRequest(f"parameter {shown} is given twice")
        given[name] = value
    for name in ("from", "to"):
        if name in given and not _valid_day(given[name]):
            raise InvalidRequest(f"parameter {name!r} must be a UTC day as YYYY-MM-DD, got "
                                 f"{json.dumps(given[name][:_MAX_QUOTED_PARAMETER])}")
    from_day, to_day = given.get("from", first_day or today), given.get("to", today)
    if from_day > to_day:
        raise InvalidRequest(f"parameter 'from' ({from_day}) is after parameter 'to' ({to_day})")
    keys = given.get("group_by")
    group_by = USAGE_DEFAULT_GROUP_BY if keys is None else tuple(keys.split(",")) if keys else ()
    for key in group_by:
        if key not in USAGE_KEYS:
            raise InvalidRequest(f"parameter 'group_by' has unknown key {json.dumps(key[:_MAX_QUOTED_PARAMETER])} "
                                 f"(known: {', '.join(USAGE_KEYS)})")
        if group_by.count(key) > 1:
            raise InvalidRequest(f"parameter 'group_by' names {key!r} twice")
    output = given.get("format", "json")
    if output not in ("json", "csv"):
        raise InvalidRequest(f"parameter 'format' must be json or csv, got "
                             f"{json.dumps(output[:_MAX_QUOTED_PARAMETER])}")
    return UsageQuery(from_day, to_day, group_by, output)


def _period_in(period: str, from_day: str, to_day: str) -> bool:
    """Whether a row's ``day`` counts in a range: a day in it, a month whose first day is in it
    (the days merged into a month are its first, so a range holding its first day holds them)."""
    return from_day <= (period if len(period) == 10 else period + "-01") <= to_day


def _csv_cell(value: Any) -> Any:
    """A cell as a spreadsheet shows it without running it: text that starts like a formula gets a
    leading apostrophe."""
    return "'" + value if isinstance(value, str) and value.startswith(_CSV_FORMULA_STARTS) else value


def usage_csv(rows: List[Dict[str, Any]], group_by: Sequence[str]) -> bytes:
    """Usage rows as CSV (RFC 4180: CRLF, quoted where needed) under a header line."""
    import csv  # here, not at the top: only a usage export needs it (~0.1 MB at start-up)

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(list(group_by) + list(USAGE_COUNTS))
    for row in rows:
        writer.writerow([_csv_cell(row[name]) for name in list(group_by) + list(USAGE_COUNTS)])
    return out.getvalue().encode("utf-8")


def usage_problems(section: Any) -> List[str]:
    """What in a state file's ``usage`` section is not a ledger row, one line each (the loader skips it)."""
    if not isinstance(section, dict) or not isinstance(section.get("rows"), list):
        return [f"usage: must be an object with a list \"rows\", got {_shown(section)}"]
    return [f"usage.rows[{number}]: must be [{', '.join(USAGE_KEYS + USAGE_COUNTS)}], got {_shown(row)}"
            for number, row in enumerate(section["rows"]) if _ledger_row(row) is None]


def _ledger_row(row: Any) -> Optional[Tuple[Tuple[str, ...], Tuple[int, ...]]]:
    """A saved row's key and counts, or None when it is not one."""
    names = len(USAGE_KEYS)
    if not isinstance(row, list) or len(row) != names + len(USAGE_COUNTS) \
            or not all(isinstance(name, str) for name in row[:names]) or not _valid_period(row[0]) \
            or not all(_is_int(n) and 0 <= n <= _MAX_LEDGER_COUNT for n in row[names:]):
        return None
    return tuple(name[:MAX_LEDGER_NAME_CHARS] for name in row[:names]), tuple(row[names:])


class UsageLedger:
    """Requests, errors and tokens per UTC day, upstream, account, model and client, read from the
    records of the requests that generate (:data:`USAGE_PATHS`), refused and failed ones included.
    A warmup answered locally counts with no upstream and no account (nothing was spent there).
    Bounded: days older than :data:`LEDGER_DAYS_KEPT` are merged into months, and past
    :data:`MAX_LEDGER_ROWS` the smallest rows of the oldest day are folded into ``(other)`` rows.
    Names pass through ``hide`` (the redactor) before they are kept: a key sent as a model name is
    never kept, shown or saved."""

    def __init__(self, hide: Callable[[str], str] = str) -> None:
        self._rows: Dict[Tuple[str, ...], Tuple[int, ...]] = {}
        self._hide = hide
        self._rolled_on = ""  # the day the last roll-up ran for

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, record: RequestRecord, now: float) -> bool:
        """Count a request whose answer has ended at ``now``; False when its path is not counted."""
        if not generates(record.method, record.path):
            return False
        local = record.local == "warmup"
        names = ("" if local else record.upstream, "" if local else record.account, record.model, record.client or "")
        today = utc_day(now)
        self._count((today,) + tuple(_ledger_name(self._hide(name)) for name in names),
                    (1, int(not 200 <= record.status < 400 or bool(record.error or record.note)), record.input_tokens,
                     record.output_tokens,
                     record.cache_read_tokens, record.cache_write_tokens))
        if today != self._rolled_on:
            self.roll_up(today)
        if len(self._rows) > MAX_LEDGER_ROWS:
            self._fold()
        return True

    def _count(self, key: Tuple[str, ...], counts: Tuple[int, ...]) -> None:
        known = self._rows.get(key)
        # a count stops at what the state file's reader takes, rather than make the row unreadable
        self._rows[key] = counts if known is None else tuple(min(a + b, _MAX_LEDGER_COUNT)
                                                             for a, b in zip(known, counts))

    def roll_up(self, today: str) -> None:
        """Merge the days older than :data:`LEDGER_DAYS_KEPT` (today included) into one row per month and key."""
        self._rolled_on = today
        oldest = (datetime.date.fromisoformat(today) - datetime.timedelta(days=LEDGER_DAYS_KEPT - 1)).isoformat()
        for key in [key for key in self._rows if len(key[0]) == 10 and key[0] < oldest]:
            self._count((key[0][:7],) + key[1:], self._rows.pop(key))

    def _fold(self) -> None:
        """Fold the smallest rows (fewest requests, then tokens) of the oldest day, then of the next,
        into ``(other)`` rows (:data:`_LEDGER_FOLDS`) until :data:`_LEDGER_FOLD_TO` of the cap is left."""
        target = int(MAX_LEDGER_ROWS * _LEDGER_FOLD_TO)
        by_period: Dict[str, Set[Tuple[str, ...]]] = collections.defaultdict(set)
        for key in self._rows:
            by_period[key[0]].add(key)
        for period in sorted(by_period):  # "2026-09" sorts before "2026-09-01", after "2026-08-31"
            keys = by_period[period]
            for fold in _LEDGER_FOLDS:
                # fewest requests, then tokens; among equals the first counted (sorted() keeps their order)
                for key in sorted(keys, key=lambda k: (self._rows[k][0], sum(self._rows[k][2:]))):
                    if len(self._rows) <= target:
                        return
                    folded = fold(key)
                    if folded != key:
                        self._count(folded, self._rows.pop(key))
                        keys.discard(key)
                        keys.add(folded)

    def first_day(self) -> Optional[str]:
        """The first day the ledger holds (the first of its first month), None when it is empty."""
        first = min((key[0] for key in self._rows), default=None)
        return first if first is None or len(first) == 10 else first + "-01"

    def rows(self, from_day: str, to_day: str, group_by: Sequence[str]) -> List[Dict[str, Any]]:
        """The rows whose day is in ``from_day`` .. ``to_day``, summed over the keys not in
        ``group_by``, sorted by those keys. A month of merged days counts whole in a range that
        holds its first day."""
        picked = [USAGE_KEYS.index(name) for name in group_by]
        sums: Dict[Tuple[str, ...], List[int]] = {}
        for key, counts in self._rows.items():
            if _period_in(key[0], from_day, to_day):
                total = sums.setdefault(tuple(key[i] for i in picked), [0] * len(USAGE_COUNTS))
                for i, n in enumerate(counts):
                    total[i] += n
        return [{**dict(zip(group_by, group)), **dict(zip(USAGE_COUNTS, counts))}
                for group, counts in sorted(sums.items())]

    def client_day(self, client: str, day: str) -> Dict[str, Any]:
        """One client's counts on one day, and the day (``GET /v1/agproxy/me``)."""
        rows = [row for row in self.rows(day, day, ("client",)) if row["client"] == client]
        return dict({name: rows[0][name] if rows else 0 for name in USAGE_COUNTS}, day=day)

    def answer(self, query: str, now: float) -> Response:
        """``GET /v1/agproxy/usage``'s answer to ``query`` (:func:`parse_usage_query`): JSON or CSV."""
        asked = parse_usage_query(query, utc_day(now), self.first_day())
        rows = self.rows(asked.from_day, asked.to_day, asked.group_by)
        if asked.format == "csv":
            return Response(200, [("Content-Type", "text/csv; charset=utf-8")], usage_csv(rows, asked.group_by))
        return json_response(200, {"from": asked.from_day, "to": asked.to_day, "group_by": list(asked.group_by),
                                   "rows": rows})

    def to_json(self) -> Dict[str, Any]:
        """The state file's ``usage`` section: one list per row, its keys then its counts."""
        return {"rows": [list(key + counts) for key, counts in self._rows.items()]}

    def load_json(self, section: Any, now: float) -> int:
        """Take the rows a state file kept (rows that are not are skipped: :func:`usage_problems`
        said them), then roll up and fold as the ledger would; the number of rows taken."""
        taken = 0
        for row in section.get("rows", ()) if isinstance(section, dict) and isinstance(section.get("rows"),
                                                                                      list) else ():
            parsed = _ledger_row(row)
            if parsed is not None:
                self._count(*parsed)
                taken += 1
        self.roll_up(utc_day(now))
        if len(self._rows) > MAX_LEDGER_ROWS:
            self._fold()
        return taken


class UsageCounter:
    """Counts each request's record in a :class:`UsageLedger` (a reader of ``Server.record_readers``)
    and has the new counts saved (``save``: the server's coalesced state save) within
    :data:`LEDGER_SAVE_INTERVAL_S`: one save for all the requests of those seconds, not one each."""

    def __init__(self, ledger: UsageLedger, clock: Callable[[], float], save: Optional[Callable[[], None]]) -> None:
        self.ledger = ledger
        self.clock = clock
        self.save = save
        self._due: Optional[asyncio.TimerHandle] = None  # the save of the counts not saved yet

    def read(self, record: RequestRecord) -> None:
        """Count a request whose answer has ended; a save is due within the interval."""
        if self.ledger.add(record, self.clock()) and self.save is not None and self._due is None:
            self._due = asyncio.get_running_loop().call_later(LEDGER_SAVE_INTERVAL_S, self.flush)

    def flush(self) -> None:
        """Save the counts not saved yet now (at the end of the interval, and at shutdown)."""
        if self._due is not None:
            self._due.cancel()
            self._due = None
            assert self.save is not None
            self.save()


# -- client limits (each client's max_concurrency, requests_per_minute, tokens_per_day) ----------

#: requests_per_minute's sliding window.
CLIENT_WINDOW_S = 60.0
#: The ``retry-after`` of a request refused after waiting MAX_SLOT_WAIT_S for a place under its
#: client's max_concurrency: nothing says when one of its requests in flight ends; as long as a
#: request waits for a busy account's slot (AccountPool.unavailable).
CLIENT_BUSY_RETRY_S = 5
#: Requests of one client's minute window that a restart restores at most, whatever the state file
#: says its seconds held: a client of a larger requests_per_minute is restored this full, not fuller
#: (a hand-edited count of 10^9 must not allocate 10^9 times).
MAX_RESTORED_WINDOW = 100000
#: A second of a saved minute window: a Unix time in ASCII digits (``str.isdigit`` takes "²" too).
_UNIX_SECOND = _LazyPattern(r"[0-9]{1,12}")


def generates(method: str, path: str) -> bool:
    """Whether a request generates (:data:`USAGE_PATHS`): what the ledger counts and the client
    limits apply to."""
    return method == "POST" and _USAGE_PATH.match(path) is not None


#: :data:`USAGE_PATHS` as one pattern (what ``fnmatch`` makes of each), matched once per request.
_USAGE_PATH = _LazyPattern("|".join(fnmatch.translate(pattern) for pattern in USAGE_PATHS))


def seconds_to_utc_midnight(now: float) -> float:
    """Seconds from ``now`` to the end of its UTC day, when a day's token budget starts again."""
    day = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date() + datetime.timedelta(days=1)
    return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc).timestamp() - now


class ClientLimited(AgproxyError):
    """A client over one of its own limits (``clients[]``: :meth:`Client.limits` names them): a 429
    that names the client (never its key) and the limit, with ``retry-after`` in whole seconds.
    Never an upstream's 429: no account was asked, nor its state touched. A day's budget spent
    carries ``x-should-retry: false`` (``final``): no retry helps for hours, and the Anthropic SDKs
    would otherwise sleep them (they honour a retry-after of any length); Claude Code gives up on a
    retry-after over 60 s by itself. So does a request refused after it waited MAX_SLOT_WAIT_S for
    its client's requests in flight to end: Claude Code retried it for nine minutes, waiting each
    time, in silence. The minute window clears within a minute, and a request refused at once
    because too many of its client's requests wait already may find room in seconds, so a client
    may retry those after ``retry-after``, as Claude Code does."""

    status = 429
    error_type = "rate_limit_error"

    def __init__(self, client: str, limit: str, message: str, retry_after_s: float, final: bool = False) -> None:
        wait = max(1, math.ceil(retry_after_s))
        super().__init__(f"client {client!r} is over its {limit} limit in agproxy's config: {message}; "
                         f"retry in {wait} s", headers=[("retry-after", str(wait))])
        self.client = client
        self.limit = limit
        self.final = final


#: Requests of one client that wait at once for a place (its max_concurrency) or for its requests
#: in flight to end (its tokens_per_day): one more is refused at once. Each waiting request holds a
#: connection, and one client must not hold them all (``max_connections``).
MAX_WAITING_PER_CLIENT = 64


class ClientLimits:
    """Each client's limits over its requests that generate (:func:`generates`), checked after the
    request is valid and permitted and before any upstream is called (:meth:`admit`):

    - ``tokens_per_day``: the tokens of its answers this UTC day, counted when each answer ends.
      The request that crosses the budget is allowed, the next is refused. Requests in flight hold
      what they may cost (``reserve``: the input's estimate and ``max_tokens``), so that parallel
      requests cannot overrun the budget many times: one that would cross it with theirs waits
      for them to end.
    - ``requests_per_minute``: a sliding 60 s window of the requests it let through.
    - ``max_concurrency``: requests in flight; one over it waits for a place.

    No request waits longer than MAX_SLOT_WAIT_S, nor more than MAX_WAITING_PER_CLIENT at once per
    client. A request's place is freed when its answer has ended (:meth:`read`, one of
    ``Server.record_readers``), streamed, refused or cut; only the answers of requests given a place
    count (a warmup answered locally takes none). The counters follow the client's name: a reload
    that changes a client's limits or key keeps them, a renamed client starts afresh, and a client
    removed and put back the same day finds its day's tokens and its window as they were. The
    windows and the day's tokens go to the state file (``saved``: what it kept). ``clock`` is the
    server's (windows and days); the waits poll in real time, as the wait for an account's slot does."""

    def __init__(self, clients: Sequence[Client], clock: Callable[[], float],
                 refused: Callable[[str, str], None] = lambda client, limit: None, saved: Any = None) -> None:
        self.clock = clock
        #: told of each refusal, by client and limit (``agproxy_client_limited_total``)
        self.refused = refused
        self._clients: Dict[str, Client] = {}
        self._windows: Dict[str, Deque[float]] = {}  # the start of each request let through, newest last
        self._days: Dict[str, Tuple[str, int]] = {}  # the UTC day and the tokens counted on it
        self._in_flight: Dict[str, int] = {}  # the places taken (a name is gone at 0)
        self._reserved: Dict[str, int] = {}  # the tokens the requests in flight hold (gone at 0)
        self._waiting: Dict[str, int] = {}
        #: request id -> its client's name, what it holds of the day's budget, and its input's estimate
        self._places: Dict[str, Tuple[str, int, int]] = {}
        self.reconfigure(clients)
        self.load_json(saved)

    def reconfigure(self, clients: Sequence[Client]) -> None:
        """Run on these clients from now on, under their new limits. The counters of a client no
        longer configured are kept while they count (its day, its minute), in case it comes back;
        its requests in flight still free their places."""
        self._clients = {client.name: client for client in clients}
        now = self.clock()
        today = utc_day(now)
        for name in [name for name, (day, _) in self._days.items() if day != today]:
            del self._days[name]
        for name in [name for name, window in self._windows.items() if not self._trimmed(window, now)]:
            del self._windows[name]

    async def admit(self, client: Client, request_id: str, reserve: int = 0, input_estimate: int = 0) -> None:
        """Let a request of ``client`` through, or raise :class:`ClientLimited`: a spent day's budget,
        a full minute window or too many waiting at once, at once; a full max_concurrency, or a
        budget that the requests in flight may spend, after waiting for them. The request takes a
        place and holds ``reserve`` tokens of the day's budget until :meth:`read` sees its answer
        end (when the answer tells no usage, ``input_estimate`` is counted); a request cancelled
        while it waits (its client left) takes none."""
        name = client.name
        if self._waiting.get(name, 0) >= MAX_WAITING_PER_CLIENT:
            self.refused(name, "max_concurrency")
            raise ClientLimited(name, "max_concurrency", f"{MAX_WAITING_PER_CLIENT} of its requests wait already "
                                "for its requests in flight to end", CLIENT_BUSY_RETRY_S)
        waited = 0.0
        self._waiting[name] = self._waiting.get(name, 0) + 1
        try:
            while True:
                current = self._clients.get(name)
                if current is None:  # a reload removed it while the request waited
                    raise AuthenticationFailed(f"client {name!r} was removed from agproxy's config")
                now = self.clock()
                busy = self._check_budgets(current, now)
                if not busy:
                    break
                if waited >= MAX_SLOT_WAIT_S:
                    limit, words = busy
                    self.refused(name, limit)
                    raise ClientLimited(name, limit, f"{words}, and none ended in {MAX_SLOT_WAIT_S:.0f} s",
                                        CLIENT_BUSY_RETRY_S, final=True)
                await asyncio.sleep(_SLOT_POLL_S)  # other requests free places in real time, whatever the clock
                waited += _SLOT_POLL_S
        finally:
            self._waiting[name] -= 1
            if not self._waiting[name]:
                del self._waiting[name]
        reserve = max(0, reserve) if current.tokens_per_day else 0
        self._in_flight[name] = self._in_flight.get(name, 0) + 1
        if reserve:
            self._reserved[name] = self._reserved.get(name, 0) + reserve
        self._places[request_id] = (name, reserve, max(0, input_estimate))
        self._windows.setdefault(name, collections.deque()).append(now)  # /me counts it, with a limit or not

    def _check_budgets(self, client: Client, now: float) -> Optional[Tuple[str, str]]:
        """Refuse a request of a client whose day's tokens are spent, or whose minute window is
        full; the limit and its words when the request must wait for others to end (a full
        max_concurrency, or a budget its requests in flight may spend); None when it may go."""
        name = client.name
        used = self.tokens_today(name, now)
        if client.tokens_per_day and used >= client.tokens_per_day:
            self.refused(name, "tokens_per_day")
            raise ClientLimited(name, "tokens_per_day", f"{used} of its {client.tokens_per_day} tokens used today "
                                "(UTC); it starts again at 00:00 UTC", seconds_to_utc_midnight(now), final=True)
        window = self._windows.get(name)
        if client.requests_per_minute and window is not None \
                and len(self._trimmed(window, now)) >= client.requests_per_minute:
            self.refused(name, "requests_per_minute")
            raise ClientLimited(name, "requests_per_minute", f"{client.requests_per_minute} request(s) in the last "
                                f"{CLIENT_WINDOW_S:.0f} s", window[-client.requests_per_minute] + CLIENT_WINDOW_S - now)
        in_flight = self._in_flight.get(name, 0)
        if client.max_concurrency and in_flight >= client.max_concurrency:
            return "max_concurrency", f"{client.max_concurrency} request(s) in flight"
        reserved = self._reserved.get(name, 0)
        if client.tokens_per_day and reserved and used + reserved >= client.tokens_per_day:
            return "tokens_per_day", (f"{used} of its {client.tokens_per_day} tokens used today (UTC), and "
                                      f"{in_flight} request(s) in flight that may spend the rest")
        return None

    @staticmethod
    def _trimmed(window: Deque[float], now: float) -> Deque[float]:
        """The window without the requests that left it by ``now``."""
        while window and window[0] <= now - CLIENT_WINDOW_S:
            window.popleft()
        return window

    def tokens_today(self, name: str, now: float) -> int:
        """The tokens a client's answers counted on ``now``'s UTC day."""
        day, tokens = self._days.get(name, ("", 0))
        return tokens if day == utc_day(now) else 0

    def read(self, record: RequestRecord) -> None:
        """A request's answer has ended: free its place and what it held of the budget, and count
        its tokens for its client today: the usage its answer told, else (an upstream that tells
        none, or not as whole numbers) the estimate of its input, so that such an upstream does not
        make the budget count nothing."""
        place = self._places.pop(record.request_id, None)
        if place is None:
            return
        name, reserve, input_estimate = place
        self._in_flight[name] -= 1
        if not self._in_flight[name]:
            del self._in_flight[name]
        if reserve:
            self._reserved[name] -= reserve
            if not self._reserved[name]:
                del self._reserved[name]
        tokens = record.tokens or (input_estimate if record.status == 200 else 0)
        if tokens:
            now = self.clock()
            self._days[name] = (utc_day(now), min(self.tokens_today(name, now) + tokens, _MAX_LEDGER_COUNT))

    def state(self, client: Client) -> Dict[str, int]:
        """Where a client stands now (``GET /v1/agproxy/me``)."""
        now, name = self.clock(), client.name
        window = self._windows.get(name)
        return {"in_flight": self._in_flight.get(name, 0), "waiting": self._waiting.get(name, 0),
                "requests_last_minute": len(self._trimmed(window, now)) if window is not None else 0,
                "tokens_today": self.tokens_today(name, now), "tokens_held": self._reserved.get(name, 0)}

    def to_json(self) -> Dict[str, Any]:
        """The state file's ``client_limits`` section: per client (a removed one's too, while it
        counts), its day and tokens, and its minute window as requests per second (``{"<unix
        second>": count}``: at most 61 entries, whatever the client's requests_per_minute)."""
        now = self.clock()
        section: Dict[str, Any] = {}
        for name in sorted(set(self._days) | set(self._windows)):
            entry: Dict[str, Any] = {}
            if self.tokens_today(name, now):
                entry["day"], entry["tokens"] = self._days[name]
            window = self._windows.get(name)
            if window and self._trimmed(window, now):
                entry["window"] = dict(collections.Counter(str(int(t)) for t in window))
            if entry:
                section[name] = entry
        return section

    def load_json(self, section: Any) -> None:
        """Take what a state file kept (parts of the wrong type are skipped: :func:`state_problems`
        said them). A restored request counts as made at the end of its second, so the window is
        never shorter than it was; a second still to come is not one agproxy saved (it would hold
        the window shut past its minute). A window holds at most its client's requests_per_minute
        (and MAX_RESTORED_WINDOW); a day's tokens are restored for any client, configured or not
        (one removed today may come back)."""
        if not isinstance(section, dict):
            return
        now = self.clock()
        for name, entry in section.items():
            if not isinstance(entry, dict) or not _CLIENT_NAME.fullmatch(name):
                continue
            day, tokens = entry.get("day"), entry.get("tokens")
            if isinstance(day, str) and _is_int(tokens) and day == utc_day(now):
                self._days[name] = (day, min(max(0, tokens), _MAX_LEDGER_COUNT))
            seconds, client = entry.get("window"), self._clients.get(name)
            if client is None or not client.requests_per_minute or not _state_value_ok(seconds, "integers"):
                continue  # a window is a minute's: only a configured window is restored
            window: Deque[float] = collections.deque()
            room = min(client.requests_per_minute, MAX_RESTORED_WINDOW)
            saved = sorted(((int(s), c) for s, c in seconds.items() if _UNIX_SECOND.fullmatch(s)), reverse=True)
            for second, count in saved:  # the newest first, while there is room
                if second > now:
                    continue
                taken = min(max(0, count), room)
                window.extendleft([min(second + 1 - 1e-3, now)] * taken)
                room -= taken
            if self._trimmed(window, now):
                self._windows[name] = window


#: How often ``watch_config`` looks at the config file: a change is applied within about twice this.
CONFIG_WATCH_INTERVAL_S = 1.0


class ConfigWatcher:
    """Reloads the config when its file changes (``watch_config``). It looks at the file's
    identity (inode, size, modification time) every :data:`CONFIG_WATCH_INTERVAL_S`, which needs
    nothing but ``os.stat`` on any system, and reloads a change once the file has held still for
    one look (an editor may write it in steps; a rename into place is one step). A config that
    does not load is logged and left; the next change is tried again."""

    def __init__(self, path: str, reload: Callable[[str], Any]) -> None:
        self.path = path
        self.reload = reload
        self._task: Optional[asyncio.Future] = None

    def follow(self, on: bool, path: Optional[str] = None) -> None:
        """Watch (``on``) the file at ``path`` (the same one when None), or stop watching."""
        if path is not None and path != self.path:
            self.path = path
            if self._task is not None:  # watch the new file from its present state
                self._task.cancel()
                self._task = None
        if on and self._task is None:
            self._task = asyncio.ensure_future(self._watch())
        elif not on and self._task is not None:
            self._task.cancel()
            self._task = None

    def _identity(self) -> Optional[Tuple[int, int, int]]:
        try:
            info = os.stat(self.path)
        except OSError:
            return None  # not there (yet, or for the moment of a rename): nothing to take
        return info.st_ino, info.st_size, info.st_mtime_ns

    async def _watch(self) -> None:
        taken = self._identity()
        seen = taken
        while True:
            await asyncio.sleep(CONFIG_WATCH_INTERVAL_S)
            now = self._identity()
            if now is None or now == taken:
                seen = now
                continue
            if now != seen:  # still changing: look again
                seen = now
                continue
            taken = now
            try:
                self.reload("the config file changed")
            except ConfigError:
                pass  # said in the log by the reload; the running config stays
            except Exception:  # a defect in agproxy: the log has it, and the watch goes on
                logging.getLogger("agproxy").exception("reloading the changed config failed")


STATE_FORMAT = 1
#: A state file holds a few learned fields and resting accounts (kilobytes) and the usage ledger (at
#: most about 12 MB: MAX_LEDGER_ROWS). Past this it is not ours.
MAX_STATE_BYTES = 16 * 1024 * 1024
#: Problems of a state file's sections said one by one; a file with thousands says the rest as a count.
MAX_STATE_PROBLEMS = 5
#: What each section of the state file holds: an object per upstream (or account), with these keys
#: of these types ("strings": a list of strings; "numbers" / "integers": an object of them).
_STATE_SECTIONS: Dict[str, Dict[str, Any]] = {
    "learned": {"fields": "strings", "betas": "strings", "server": str},
    "accounts": {"resting_until": "number", "rejected_key": bool, "reason": str, "models": "numbers",
                 "limits_in_a_row": int, "key": str},
    "windows": {"configured": (int, type(None)), "server": str, "models": "integers"},
    "client_limits": {"day": str, "tokens": int, "window": "integers"},
}
_STATE_TYPE_NAMES = {"strings": "a list of strings", "numbers": "an object of numbers",
                     "integers": "an object of integers", "number": "a number", str: "a string", bool: "true or false",
                     int: "an integer", (int, type(None)): "an integer or null"}


def _state_value_ok(value: Any, kind: Any) -> bool:
    if kind == "strings":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if kind in ("numbers", "integers"):
        return isinstance(value, dict) and all(_is_number(v) if kind == "numbers" else _is_int(v)
                                               for v in value.values())
    if kind == "number":
        return _is_number(value)
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def state_problems(data: Dict[str, Any]) -> List[str]:
    """What in a state file's sections has the wrong type, one line each (``learned.x.fields: must
    be a list of strings, got 5``); the loaders skip those parts, and the user is told. Unknown
    sections are left alone (a newer agproxy may have written them)."""
    problems: List[str] = []
    if "pid" in data and not _is_int(data["pid"]):
        problems.append(f"pid: must be an integer, got {_shown(data['pid'])}")
    for section, keys in _STATE_SECTIONS.items():
        entries = data.get(section)
        if section not in data:
            continue
        if not isinstance(entries, dict):
            problems.append(f"{section}: must be an object, got {_shown(entries)}")
            continue
        for name, entry in entries.items():
            if not isinstance(entry, dict):
                problems.append(f"{section}.{name}: must be an object, got {_shown(entry)}")
                continue
            problems += [f"{section}.{name}.{key}: must be {_STATE_TYPE_NAMES[kind]}, got {_shown(entry[key])}"
                         for key, kind in keys.items() if key in entry and not _state_value_ok(entry[key], kind)]
    if "usage" in data:
        problems += usage_problems(data["usage"])
    if len(problems) > MAX_STATE_PROBLEMS:
        problems[MAX_STATE_PROBLEMS:] = [f"and {len(problems) - MAX_STATE_PROBLEMS} more"]
    return problems


class NotAgproxyState(AgproxyError):
    """The file at ``state_file`` is not agproxy's: agproxy neither reads, replaces nor removes it."""


class StateFile:
    """agproxy's persistent state (what upstreams rejected; account cooldowns; learned context
    windows; the usage ledger), one JSON file.

    Written atomically (temporary file, fsync, rename). A missing file is an empty state. agproxy
    writes and removes only a file that :meth:`load` recognised as its own: absent, or a regular
    file holding agproxy's state format. Anything else (a FIFO, ``/dev/null``, the config itself,
    a file of a newer format) is said once and left alone: the state is then kept in memory only.
    Sections of the wrong type are said one by one and skipped. An empty path keeps nothing.
    ``report`` is where those lines go (the log, or the ``agproxy state`` command's stderr).

    While agproxy runs it holds a shared lock on ``<state_file>.lock`` (:meth:`hold`), so that
    ``agproxy state clear``, which needs the lock alone (:meth:`forget`), cannot remove what a
    running agproxy would save again; the kernel drops the lock with the process, kill -9 included.
    """

    def __init__(self, path: str, report: Optional[Callable[[str], None]] = None) -> None:
        self.path = path
        self.log = logging.getLogger("agproxy")
        self.report: Callable[[str], None] = report or self.log.warning
        #: why the file at ``path`` is not agproxy's (None: it is, or there is none)
        self.foreign: Optional[str] = None
        self._refused_save = False  # said once, at the first save refused
        self._lock: Optional[int] = None

    def load(self) -> Dict[str, Any]:
        """The saved state; a file that is not agproxy's is an empty state (and said so)."""
        if not self.path:
            return {}
        try:
            data = self._read()
            self._remove_stale_temporaries()  # beside agproxy's own file only
        except NotAgproxyState as exc:
            self.foreign = exc.message
            self.report(f"state file {self.path} is not agproxy's ({exc.message}): agproxy neither reads, replaces "
                        "nor removes it, and keeps its state in memory only; point state_file at another path "
                        "(or \"\" to keep nothing), or move that file away")
            return {}
        for problem in state_problems(data):
            self.report(f"state file {self.path}: {problem}; that part is ignored")
        return data

    def _read(self) -> Dict[str, Any]:
        """The file's state ({} for none); :class:`NotAgproxyState` for anything but agproxy's format."""
        if not os.path.lexists(self.path):
            return {}
        try:
            if not os.path.isfile(self.path):  # a FIFO would block the start, /dev/zero never end
                raise NotAgproxyState("not a regular file")
            with open(self.path, "rb") as f:
                raw = f.read(MAX_STATE_BYTES + 1)
        except OSError as exc:
            raise NotAgproxyState(f"unreadable: {_describe_os_error(exc)}") from None
        if len(raw) > MAX_STATE_BYTES:
            raise NotAgproxyState(f"larger than {MAX_STATE_BYTES} bytes")
        try:
            data = loads_strict(raw)
        except (ValueError, UnicodeDecodeError):
            raise NotAgproxyState("not JSON") from None
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise NotAgproxyState(f'JSON without "format": {STATE_FORMAT}')
        return data

    def _remove_stale_temporaries(self) -> None:
        """Delete ``state.json.<pid>.tmp`` files that processes killed mid-write left behind."""
        folder, name = os.path.split(self.path)
        try:
            entries = os.listdir(folder or ".")
        except OSError:
            return
        for entry in entries:
            match = re.fullmatch(re.escape(name) + r"\.(\d+)\.tmp", entry)
            if match is None or _process_alive(int(match.group(1))):
                continue
            try:
                os.remove(os.path.join(folder, entry))
            except OSError as exc:
                self.log.warning("cannot remove stale %s: %s", entry, _describe_os_error(exc))

    def save(self, data: Dict[str, Any]) -> None:
        """Write the state atomically: a temporary file, fsync, then rename over the old one; never
        over a file that is not agproxy's (checked again here: it may have changed since the start)."""
        if not self.path:
            return
        if self.foreign is None:
            try:
                self._read()
            except NotAgproxyState as exc:
                self.foreign = exc.message
        if self.foreign is not None:
            if not self._refused_save:
                self.report(f"not saving the state: {self.path} is not agproxy's ({self.foreign}); it is left alone")
                self._refused_save = True
            return
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(temporary, "w", encoding="utf-8") as f:
                # compact: the usage ledger's rows are most of it (`agproxy state show` is for reading)
                json.dump(dict(data, format=STATE_FORMAT), f, separators=(",", ":"), sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            self.log.warning("cannot write state file %s: %s", self.path, _describe_os_error(exc))

    def _open_lock(self) -> Optional[int]:
        """The lock file's descriptor (made if need be), or None where there is no lock to take:
        no ``fcntl`` (Windows), or a lock path that is not a regular file."""
        if fcntl is None or not self.path:
            return None
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK,
                     0o600)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    def hold(self) -> None:
        """Take the shared lock for as long as this process runs (agproxy instances share it);
        before :meth:`load`, so that no ``state clear`` comes between reading the state and holding
        it. A file that is not agproxy's gets no lock file beside it (``/dev/null.lock``)."""
        if not self.path or self._lock is not None:
            return
        try:
            self._read()
        except NotAgproxyState:
            return
        try:
            fd = self._open_lock()
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # alone with it? (then shared, below)
                except BlockingIOError:
                    self.log.warning("another agproxy runs with the state file %s: both save into it, and the last "
                                     "save wins; give each instance its own state_file", self.path)
                fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError as exc:
            self.log.warning("cannot lock %s.lock (agproxy state clear will not know agproxy runs): %s", self.path,
                             _describe_os_error(exc))
            return
        self._lock = fd

    def forget(self) -> str:
        """Remove the state file (``agproxy state clear``); the line to print. :class:`AgproxyError`
        when it is not agproxy's or an agproxy runs with it (its next save would bring it back)."""
        if self.foreign is not None:
            raise NotAgproxyState(f"{self.path} is not agproxy's state file ({self.foreign}); not removing it")
        fd = self._open_lock()
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    saver = self._read().get("pid")
                    raise AgproxyError(f"an agproxy is running with {self.path}" + (
                        f" (the last to save it was pid {saver})" if _is_int(saver) else "") +
                        " and would save its state again; stop it, then clear") from None
            try:
                os.remove(self.path)
            except FileNotFoundError:
                return f"{self.path} does not exist: nothing to forget"
            return f"{self.path} removed: account rests, learned rejections and the usage ledger are forgotten"
        finally:
            if fd is not None:
                os.close(fd)


class _RedactingFormatter(logging.Formatter):
    """Formats a log record as one line (what would break it, in a model name or an upstream's
    words, escaped: :func:`one_line`; a traceback follows on lines of its own), then hides every
    secret in the whole text, traceback included."""

    def __init__(self, fmt: str, redactor: Redactor) -> None:
        super().__init__(fmt)
        self.redactor = redactor

    def formatMessage(self, record: logging.LogRecord) -> str:
        return one_line(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor.text(super().format(record))


class _JsonFormatter(logging.Formatter):
    """Formats a log record as one JSON object (``log_format: json``): ``time`` (ISO 8601, UTC),
    ``level``, ``logger``, ``msg`` (and ``traceback``); an access line adds its request record's
    fields (:meth:`RequestRecord.fields`) and ``event: "access"``. Every secret is hidden in the
    whole line."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        line: Dict[str, Any] = {"time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                                "level": record.levelname.lower(), "logger": record.name,
                                "msg": record.getMessage()}
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            line["event"] = "access"
            line.update(access)
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        text = json.dumps(line, ensure_ascii=False, default=str)  # escapes controls, not U+2028 and U+2029
        return self.redactor.text(text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
                                  .replace("\x85", "\\u0085"))


def _agproxy_running(pid: int) -> bool:
    """Whether process ``pid`` runs and is an agproxy (where the system says what it runs)."""
    if not _process_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"agproxy" in f.read()
    except OSError:
        return True  # no /proc here: alive is as much as can be known


def _process_alive(pid: int) -> bool:
    """Whether a process with this id runs (ours counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process, or an id we cannot ask about: leave its file alone
    return True


def configure_logging(level: str, redactor: Optional[Redactor] = None, stream: Any = None,
                      log_format: str = "text") -> logging.Handler:
    """Log to stderr (or ``stream``): the ``agproxy`` logger and its ``agproxy.access`` child, one
    line per event (``log_format``: text, or one JSON object), with every configured key (and
    anything shaped like a key) hidden."""
    handler = logging.StreamHandler(stream or sys.stderr)
    redactor = redactor or Redactor()
    handler.setFormatter(_JsonFormatter(redactor) if log_format == "json" else
                         _RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", redactor))
    logger = logging.getLogger("agproxy")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    return handler


#: The models Claude Code asks for when it is not told which (no ``--model`` and no ``ANTHROPIC_MODEL``)
#: and for ``--model sonnet``/``haiku``: 2.1.332's, then 2.1.197's. A ``model_map`` that routes none
#: of them answers Claude Code's first request 404, which it shows only as "There's an issue with the
#: selected model". Update it from the newest Claude Code, as :data:`CLAUDE_MODELS`.
CLAUDE_CODE_DEFAULT_MODELS = ("claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5",
                              "claude-opus-4-8", "claude-sonnet-5", "claude-haiku-4-5-20251001")


def _config_problems(config: Config, cwd: str) -> List[str]:
    """What ``check`` warns of in the config as a whole: no config file found (the built-in demo is
    checked, as the server would serve it), and a ``model_map`` that routes none of the models
    Claude Code asks for by default."""
    problems = []
    if config.upstreams == (DEMO_UPSTREAM,) and config.source == Config.source:
        problems.append(f"no config file found (no --config, no $AGPROXY_CONFIG, no agproxy.json in {cwd}, no "
                        "~/.config/agproxy/config.json): checking the built-in demo upstream, which answers "
                        "locally without a model; pass --config FILE (see README: Configuration)")
    routed = [model for model in CLAUDE_CODE_DEFAULT_MODELS
              if any(fnmatch.fnmatchcase(model, rule.match) for rule in config.model_map)]
    if config.model_map and not routed:  # with no model_map, every model goes to the first upstream
        example = config.model_map[0]
        rule = {"match": "*", "upstream": example.upstreams[0], **({"model": example.model} if example.model else {})}
        problems.append(f"model_map routes none of the models Claude Code asks for by default "
                        f"({', '.join(CLAUDE_CODE_DEFAULT_MODELS)}): Claude Code started without --model NAME or "
                        "ANTHROPIC_MODEL gets 404 and shows only \"There's an issue with the selected model\"; add "
                        f"a last rule such as {json.dumps(rule)}")
    return problems


async def check_upstreams(config: Config, out: Callable[[str], None], redactor: Optional[Redactor] = None) -> bool:
    """Probe each upstream and account once and print one line each (``ok``, ``WARN`` or
    ``FAIL``), then what the config asks of the upstream that it does not offer; True when
    nothing failed (warnings do not fail)."""
    client = UpstreamClient()
    redactor = redactor or Redactor(config.secrets(dict(os.environ)))
    healthy = True
    for problem in config.auth_problems():
        verdict = "WARN" if config.clients else "FAIL"
        out(f"{verdict}  config: {problem}")
        healthy = healthy and verdict != "FAIL"
    for line in _config_problems(config, os.getcwd()):
        out(f"WARN  config: {line}")
    saved = StateFile(config.state_file).load() if config.state_file and os.path.exists(config.state_file) else {}
    for line in AccountPool(config.upstreams).load_json(saved.get("accounts"), time.time()):
        out(f"WARN  {line}: a running agproxy with this config waits it out, or `agproxy state clear` (agproxy "
            "stopped) forgets it")
    try:
        for upstream in config.upstreams:
            adapter = ADAPTERS[upstream.kind]
            listed: Optional[List[str]] = None
            reached: Optional[Account] = None  # the first account that probed ok
            for account in upstream.accounts:
                label = f"{upstream.name} ({upstream.kind}) account {account.name}"
                verdict, line, models = await _probe(client, adapter, upstream, account, redactor)
                out(f"{verdict:<5} {label}: {line}")
                healthy = healthy and verdict != "FAIL"
                listed = listed if listed is not None else models
                reached = reached or (account if verdict == "ok" else None)
            fit = await _profile_fit(client, adapter, upstream, reached, _probe_model(config, upstream, listed),
                                     redactor) if reached else None
            if fit:
                out(f"{fit[0]:<5} {upstream.name}: {fit[1]}")
                healthy = healthy and fit[0] != "FAIL"
            for line in _mapping_problems(config, upstream, listed):
                out(f"WARN  {upstream.name}: {line}")
    finally:
        client.shutdown()
    return healthy


async def _probe(client: UpstreamClient, adapter: type, upstream: Upstream, account: Account,
                 redactor: Redactor) -> Tuple[str, str, Optional[List[str]]]:
    """One account's verdict, what to say of it, and the model ids its upstream lists (if it did)."""
    if not adapter.probe_path:
        return "ok", "built in, answers locally", None
    problem = adapter.base_url_problem(upstream)
    if problem:
        return "FAIL", problem, None
    try:
        status, body = await client.fetch("GET", upstream_url(upstream.base_url, adapter.probe_path),
                                          adapter.probe_headers(upstream, account),
                                          deadline_s=upstream.connect_timeout_s, limit=MAX_UPSTREAM_BODY_BYTES)
    except UpstreamFailure as exc:
        return "FAIL", exc.message, None
    empty = "; its api_key is empty, so no key is sent" if not account.api_key else ""
    body = redactor.data(body)  # an echoed key, before anything cuts it
    meaning = upstream_status_of(status, body)
    if meaning in (401, 403) or status == 403 and meaning == 502:  # a 403 page, to a request with no words: the key's
        said = upstream_error_text(body).strip().splitlines()
        words = f": {said[0][:200]}" if said else ""
        return "FAIL", f"the upstream rejected this account's key (HTTP {status}{words}){empty}", None
    if status == 404:
        return "FAIL", (f"nothing at {upstream_url(upstream.base_url, adapter.probe_path)} (HTTP 404): "
                        f"{adapter.not_found_advice}"), None
    if status == 429:
        return "WARN", "reachable, but this account is rate-limited right now (HTTP 429)", None
    if status >= 500:
        return "FAIL", f"the upstream answered HTTP {status}", None
    if empty and not adapter.keys_optional:
        return "WARN", f"reachable (HTTP {status}), but its api_key is empty: no key is sent", None
    try:
        listed: Optional[List[str]] = [m["id"] for m in await list_upstream_models(
            client, adapter, upstream, account, body if adapter.probe_path == adapter.models_path else None)]
    except UpstreamFailure:
        listed = None  # reachable, but no list to check model_map against
    return "ok", f"reachable (HTTP {status})" + (" without a key" if empty else ""), listed


#: What ``check`` calls the request it learns an upstream's profile with (see ``profile_probe``).
_SHAPED_PROBE = "a request shaped like Claude Code's (cache_control, an anthropic-beta header, context_management)"


def _probe_model(config: Config, upstream: Upstream, listed: Optional[List[str]]) -> str:
    """The model a probe asks for: the first the upstream lists (Anthropic lists its newest first,
    which takes every field Claude Code sends), else the first ``model_map`` names for it, else a
    Claude model (what Claude Code asks for unmapped)."""
    named = [rule.model for rule in config.model_map if rule.model and upstream.name in rule.upstreams]
    return (listed or named or [KNOWN_CLAUDE_MODELS[0][0]])[0]


async def _profile_fit(client: UpstreamClient, adapter: type, upstream: Upstream, account: Account,
                       model: str, redactor: Redactor) -> Optional[Tuple[str, str]]:
    """The verdict and line of which profile fits the upstream, where its kind has profiles."""
    try:
        fit = await adapter.profile_probe(client, upstream, account, model)
    except UpstreamFailure as exc:
        return "WARN", f"which profile fits is unknown: {_SHAPED_PROBE} got no answer ({exc.message})"
    return _profile_fit_line(upstream, fit, redactor) if fit else None


def _profile_fit_line(upstream: Upstream, fit: ProfileFit, redactor: Redactor) -> Tuple[str, str]:
    """Word a :class:`ProfileFit`: ``ok`` when the configured profile fits, ``FAIL`` when Claude
    Code's requests would be refused for extras that the ``compatible`` profile strips."""
    where = f"{fit.path} (asked for 1 token: this upstream has no count_tokens)" if fit.spent else "count_tokens"
    said = upstream_error_text(redactor.data(fit.said)).strip().splitlines()  # every secret, before the cut
    answer = f"HTTP {fit.status}" + (f": {said[0][:200]}" if said else "")
    compatible = upstream.profile == "compatible"
    if fit.no_route:
        return "FAIL", (f"no Anthropic Messages API at {upstream_url(upstream.base_url, fit.path)} ({answer}; "
                        "count_tokens is absent too): an OpenAI-compatible server (vLLM, Ollama, LM Studio, "
                        "llama.cpp) takes \"kind\": \"openai\" with its /v1 base URL, e.g. http://host:8000/v1; "
                        "else base_url must be the root its Anthropic API is under (agproxy adds /v1/messages)")
    if fit.extras_taken:
        if compatible:
            return "ok", (f"profile \"compatible\" works, and \"anthropic\" would too: {where} took {_SHAPED_PROBE} "
                          "(the full profile keeps cache_control and betas, so prompt caching saves)")
        return "ok", f"profile \"anthropic\" fits: {where} took {_SHAPED_PROBE}"
    refused = f"{where} refused {_SHAPED_PROBE} ({answer})"
    if fit.extras_taken is False and fit.basic_taken:
        if compatible:
            return "ok", f"profile \"compatible\" fits: {refused}, and took it without them"
        return "FAIL", (f"profile \"anthropic\" does not fit: {refused}, and took it without them: set "
                        f"\"profile\": \"compatible\" on upstream {upstream.name!r}")
    if fit.extras_taken is False:
        return "WARN", f"which profile fits is unknown: {refused}, and refused it without them too"
    return "WARN", f"which profile fits is unknown: {where} answered {_SHAPED_PROBE} with {answer}"


def _mapping_problems(config: Config, upstream: Upstream, listed: Optional[List[str]]) -> List[str]:
    """The models ``model_map`` sends to ``upstream`` by exact name that its list does not have."""
    if not listed:
        return []
    problems = []
    for rule in config.model_map:
        if upstream.name in rule.upstreams and rule.model and rule.model not in listed and \
                rule.model[len("models/"):] not in listed:  # Gemini's names may be written models/NAME
            shown = ", ".join(sorted(listed)[:5]) + (", ..." if len(listed) > 5 else "")
            problems.append(f"model_map sends {rule.match!r} to model {rule.model!r}, which this upstream does not "
                            f"list (it lists {shown})")
    return problems


# =====================================================================================
# 13. CLI and main()
# =====================================================================================


_COMMANDS_HELP = """commands:
  agproxy check [--config FILE]        validate the config and probe every upstream and account
  agproxy state show|clear [--config FILE]
                                       show or forget what is kept across restarts (account rests,
                                       learned rejections); stop agproxy before clearing
  agproxy keys new NAME                print a fresh client key once, and the config entry for it
  agproxy keys list [--config FILE]    the clients' names and key fingerprints"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's, given the width ``shutil.get_terminal_size`` would give: argparse's own asks shutil,
    whose import (with bz2 and lzma) cost every start ~0.5 MB, though help is seldom printed."""

    def __init__(self, prog: str) -> None:
        try:
            columns = int(os.environ["COLUMNS"])
        except (KeyError, ValueError):
            columns = 0
        if columns <= 0:
            try:
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
            except (AttributeError, ValueError, OSError):
                columns = 80
        super().__init__(prog, width=max(columns, 1) - 2)


def _arg_parser(check: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agproxy" + (" check" if check else ""),
        description=("Validate the config and probe each upstream." if check
                     else "A local gateway for the Anthropic Messages API."),
        epilog=None if check else _COMMANDS_HELP, formatter_class=_HelpFormatter,
    )
    parser.add_argument("--config", help="config file (default: $AGPROXY_CONFIG, ./agproxy.json, "
                                          "~/.config/agproxy/config.json, else the built-in demo)")
    if not check:
        parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
        parser.add_argument("--port", type=int, help="port to listen on (default 8045; 0 picks a free one)")
        parser.add_argument("--log-level", choices=LOG_LEVELS, help="log level (default info)")
        parser.add_argument("--version", action="version", version=f"agproxy {__version__}")
    return parser


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _serve(config: Config, load: Optional[Callable[[], Config]] = None,
                 redactor: Optional[Redactor] = None) -> int:
    log = logging.getLogger("agproxy")
    store = StateFile(config.state_file)
    store.hold()  # `agproxy state clear` refuses while it is held
    server = Server(config, state=store.load(), persist=store.save, load=load, redactor=redactor)
    try:
        host, port = await server.start()
    except OSError as exc:
        reason = (f"the address is already in use: agproxy may be running there already (see what holds the "
                  f"port with `ss -ltnp 'sport = :{config.port}'` or `lsof -i :{config.port}`); stop it, or "
                  "choose another --port") if exc.errno == errno.EADDRINUSE else _describe_os_error(exc)
        print(f"agproxy: cannot listen on {config.host}:{config.port}: {reason}", file=sys.stderr)
        server.client.shutdown()
        return 1
    # What agproxy holds once it is up (modules, config, state) lives as long as the process: out of the
    # collector's view, a full collection scans only what requests made (one took 22 ms with 200 streams
    # running, holding every stream and the first byte of new ones; 3.7 ms frozen)
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop() -> None:
        if stop.is_set():
            log.warning("second interrupt: stopping at once; %d request(s) in flight cut", server.http.cut_now())
        stop.set()

    def on_hangup() -> None:
        try:
            server.reload_file("SIGHUP")
        except ConfigError:
            pass  # said in the log; the running config stays

    for sig, handler in ((signal.SIGINT, on_stop), (signal.SIGTERM, on_stop),
                         (getattr(signal, "SIGHUP", None), on_hangup)):
        if sig is None:
            continue
        try:
            loop.add_signal_handler(sig, handler)
        except (NotImplementedError, RuntimeError):
            signal.signal(sig, lambda *_, call=handler: loop.call_soon_threadsafe(call))
    # ready only now: a signal sent on seeing this line finds its handler in place
    print(f"agproxy listening on http://{_url_host(host)}:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    log.info("stopping: no new connections; letting requests in flight finish (up to %g s, shutdown_grace_s; "
             "interrupt again to stop at once)", config.shutdown_grace_s)
    await server.shutdown()
    log.info("stopped")
    return 0


def _rests_in_words(accounts: Any, now: float) -> List[str]:
    """The rests a state file keeps, one line each, for a person to read."""
    lines = []
    for name, entry in sorted(accounts.items()) if isinstance(accounts, dict) else []:
        if not isinstance(entry, dict):
            continue
        models = entry.get("models") if isinstance(entry.get("models"), dict) else {}
        reason = entry.get("reason") or "no reason"
        for model, until in [("every model", entry.get("resting_until"))] + sorted(models.items()):
            if _is_number(until) and math.isfinite(until) and until > now:
                lines.append(f"{name} rests until {_iso_time(until)} for {model} ({reason})")
    return lines


def _state_command(argv: List[str]) -> int:
    """``agproxy state show|clear``: what the state file of the config in effect holds, or forget it."""
    parser = argparse.ArgumentParser(prog="agproxy state", description="Show or forget what agproxy keeps across "
                                     "restarts: account rests, what upstreams rejected, the usage ledger.")
    parser.add_argument("action", choices=("show", "clear"))
    parser.add_argument("--config", help="config file (default: the same lookup as agproxy itself)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, {})
    except ConfigError as exc:
        try:  # the keys it names are not needed to find the state file: look past unset variables
            config = load_config(args.config, {}, unset_as_placeholder=True)
        except ConfigError:
            print(f"config: {exc.message}", file=sys.stderr)
            return 2
    path = config.state_file
    if not path:
        print("state: state_file is \"\" in the config: nothing is kept")
        return 0
    if not os.path.exists(path):
        print(f"state: {path} does not exist: nothing is kept yet" + ("" if args.config else
              " (--config names the config whose state to show)"))
        return 0
    store = StateFile(path, report=lambda line: print(f"state: {line}", file=sys.stderr))
    kept = store.load()
    if args.action == "show":
        if store.foreign is not None:
            return 1
        for line in _rests_in_words(kept.get("accounts"), time.time()):
            print(f"state: {line}")
        print(json.dumps(kept, indent=2, sort_keys=True))
        return 0
    writer = kept.get("pid")
    if store.foreign is None and fcntl is None and _is_int(writer) and writer != os.getpid() \
            and _agproxy_running(writer):  # no lock to ask here: the pid of the last save is all there is
        print(f"state: agproxy (pid {writer}) is running with {path} and would save its rests again; stop it, "
              "then clear", file=sys.stderr)
        return 1
    try:
        said = store.forget()
    except AgproxyError as exc:
        print(f"state: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"state: cannot remove {path}: {_describe_os_error(exc)}", file=sys.stderr)
        return 1
    print(f"state: {said}")
    return 0


#: Random bytes in a key ``agproxy keys new`` makes: 256 bits, 43 characters of base64url.
_NEW_KEY_BYTES = 32


def _keys_command(argv: List[str]) -> int:
    """``agproxy keys new NAME``: a fresh client key, printed once, and the entry to paste into
    ``clients`` (which holds only its SHA-256); ``agproxy keys list``: each client's name and the
    fingerprint of its key (the SHA-256's first 12 hex digits), never a key."""
    parser = argparse.ArgumentParser(prog="agproxy keys", description="Make a key for a client, or list the "
                                     "clients of a config with their keys' fingerprints.")
    actions = parser.add_subparsers(dest="action", required=True)
    new = actions.add_parser("new", help="print a fresh key once, and the config entry to paste")
    new.add_argument("name", help="the client's name: a person or a job")
    listed = actions.add_parser("list", help="the config's clients and their keys' fingerprints")
    listed.add_argument("--config", help="config file (default: the same lookup as agproxy itself)")
    args = parser.parse_args(argv)
    if args.action == "new":
        if not _CLIENT_NAME.fullmatch(args.name):
            print(f"keys: the name must be 1 to 64 letters, digits or . _ @ + -, got {_shown(args.name)}",
                  file=sys.stderr)
            return 2
        key = "agp-" + base64.urlsafe_b64encode(os.urandom(_NEW_KEY_BYTES)).decode().rstrip("=")
        print(f"key for {args.name} (shown once; agproxy keeps only its SHA-256):\n{key}\n")
        print("add to \"clients\" in agproxy's config:")
        print(json.dumps({"name": args.name, "api_key_sha256": key_sha256(key)}))
        print(f"\nand give {args.name} the key, to run Claude Code as (HOST:PORT is agproxy's; other clients take the "
              "key as their API key):")
        print("ANTHROPIC_BASE_URL=http://HOST:PORT ANTHROPIC_AUTH_TOKEN=<the key above> claude")
        return 0
    try:
        config = load_config(args.config, {}, unset_as_placeholder=True)
    except ConfigError as exc:
        print(f"config: {exc.message}", file=sys.stderr)
        return 2
    if not config.clients:
        print(f"keys: {config.source} has no clients")
    for client in config.clients:
        print(f"{client.name}\t{client.key_sha256[:12]}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run agproxy (or ``agproxy check`` / ``agproxy state``); returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["state"]:
        return _state_command(argv[1:])
    if argv[:1] == ["keys"]:
        return _keys_command(argv[1:])
    check = argv[:1] == ["check"]
    args = _arg_parser(check).parse_args(argv[1:] if check else argv)
    overrides = {} if check else {"host": args.host, "port": args.port, "log_level": args.log_level}
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"config: {exc.message}", file=sys.stderr)
        return 2
    redactor = Redactor(config.secrets(dict(os.environ)))
    configure_logging(config.log_level, redactor, log_format="text" if check else config.log_format)
    if check:
        print(f"config: {config.source}: ok ({len(config.upstreams)} upstream(s))")
        # an upstream's answer may echo a key: never print it
        return 0 if asyncio.run(check_upstreams(config, lambda line: print(redactor.text(line)), redactor)) else 1
    log_startup(config)

    started_from = config.source if config.source != Config.source else None

    def load() -> Config:
        """The config again, with the flags still overriding: the very file agproxy started from
        (gone for a moment, it is an error, not a switch to the built-in demo), or the lookup
        again when it started from none."""
        return load_config(started_from or args.config, overrides)

    try:
        return asyncio.run(_serve(config, load, redactor))
    except KeyboardInterrupt:
        return 0


def log_startup(config: Config) -> None:
    """The lines that say what this run serves: the config, each upstream, a key-less auth mode."""
    log = logging.getLogger("agproxy")
    if config.upstreams == (DEMO_UPSTREAM,) and config.source == Config.source:
        log.warning("no config file found: serving the built-in demo upstream, which answers locally "
                    "without a model (see README: Configuration)")
    else:
        log.info("config: %s", config.source)
    for upstream in config.upstreams:
        log.info("upstream %s: %s %s, %d account(s)", upstream.name, upstream.kind,
                 upstream.base_url or "(built in)", len(upstream.accounts))
        problem = ADAPTERS[upstream.kind].base_url_problem(upstream)
        if problem:
            log.warning("upstream %s: %s", upstream.name, problem)
    log.info("%s", config.auth_summary())
    for problem in config.auth_problems():
        log.warning("%s", problem)


if __name__ == "__main__":
    sys.exit(main())
