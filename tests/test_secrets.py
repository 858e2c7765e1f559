"""Secrets never leak, even when an upstream echoes them (issue 18): every credential the config
holds is known to the one :class:`agproxy.Redactor` (account keys, upstream headers and
extra_body, proxy userinfo, ``${VAR}`` headers), in every spelling an echo may use (as it is,
JSON-escaped, URL-encoded, base64 at any alignment), and a credential cut across stream deltas is
still hidden in the text the client joins (:class:`agproxy.DeltaRedactor`, which every kind's
relayed stream goes through). The fault matrix checks the same end to end, for every kind."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import urllib.parse
from typing import Any, Dict, List, Tuple

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import agproxy
from tests.conftest import AGPROXY, clean_env, write_config
from tests.fakes.misbehaving import ALICE_KEY, ECHO_HEADERS, HEADER_SECRET, MisbehavingUpstream

#: keys of any printable ASCII, `"` and `\` included (what a config's api_key and headers allow)
KEYS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=8, max_size=40)
#: what a model writes around a key: any text (no lone surrogates: they are not UTF-8)
PROSE = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)


def spelled(key: str, how: str, prefix: str) -> str:
    """``key`` as an echo writes it: ``raw``, ``json`` (escaped inside a JSON string), ``url``, or
    ``base64`` of ``prefix + key`` (a Basic ``user:key``, at whatever alignment ``prefix`` gives)."""
    if how == "json":
        return json.dumps(key)[1:-1]
    if how == "url":
        return urllib.parse.quote(key, safe="")
    if how == "base64":
        return base64.b64encode((prefix + key).encode()).decode()
    return key


# -- the spellings of a key, in one body -------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(key=KEYS, how=st.sampled_from(["raw", "json", "url", "base64"]), prefix=st.sampled_from(["", "u:", "ab:"]),
       before=PROSE, after=PROSE, ascii_only=st.booleans(), hostile_escapes=st.booleans())
def test_no_spelling_of_a_key_survives_in_a_json_body(key: str, how: str, prefix: str, before: str, after: str,
                                                      ascii_only: bool, hostile_escapes: bool) -> None:
    """A JSON answer whose text holds a key in any spelling (its quotes and backslashes escaped as
    JSON writes them, or as ``\\u0022`` and ``\\u005c`` by an upstream that wants to get past)."""
    text = before + spelled(key, how, prefix) + after
    body = json.dumps({"content": [{"type": "text", "text": text}]}, ensure_ascii=ascii_only).encode()
    if hostile_escapes:
        body = re.sub(rb'\\(["\\])', lambda m: b"\\u%04x" % ord(m.group(1)), body)
    client_text = json.loads(agproxy.Redactor([key]).data(body))["content"][0]["text"]
    assert key not in client_text and spelled(key, how, prefix) not in client_text, client_text


@given(key=KEYS, how=st.sampled_from(["raw", "json", "url", "base64"]), prefix=st.sampled_from(["", "u:", "ab:"]))
@settings(max_examples=200, deadline=None)
def test_no_spelling_of_a_key_survives_in_agproxy_own_words(key: str, how: str, prefix: str) -> None:
    """Errors and log lines (Redactor.text) quote an upstream's words: the same spellings go."""
    line = f"upstream said: bad key {spelled(key, how, prefix)}!"
    assert spelled(key, how, prefix) not in agproxy.Redactor([key]).text(line)


# -- a key cut across the deltas of a stream ---------------------------------------------------------

DELTAS = {"text": ("text_delta", "text"), "thinking": ("thinking_delta", "thinking"),
          "tool_use": ("input_json_delta", "partial_json")}


def encode(payload: Dict[str, Any], style: str) -> bytes:
    """An event as agproxy's translators write it (``compact``), as a server with spaces after its
    separators does (``spaced``), or with every non-ASCII character escaped (``ascii``)."""
    if style == "compact":
        return agproxy.encode_sse_json(payload["type"], payload)
    data = json.dumps(payload, ensure_ascii=style == "ascii")
    return f"event: {payload['type']}\ndata: {data}\n\n".encode()


def stream_of(pieces: List[str], block: str, opening: str, style: str) -> List[bytes]:
    """The events of a one-block answer whose text comes as ``opening`` (in content_block_start,
    text and thinking blocks only) and then ``pieces``, with a ping among the deltas."""
    kind, field = DELTAS[block]
    start: Dict[str, Any] = {"type": block, block: opening} if block != "tool_use" else \
        {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}
    events = [{"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                    "model": "m", "content": [], "usage": {}}},
              {"type": "content_block_start", "index": 0, "content_block": start}]
    for number, piece in enumerate(pieces):
        events.append({"type": "content_block_delta", "index": 0, "delta": {"type": kind, field: piece}})
        if number == 1:
            events.append({"type": "ping"})
    events += [{"type": "content_block_stop", "index": 0},
               {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
               {"type": "message_stop"}]
    return [encode(event, style) for event in events]


def relayed(events: List[bytes], cuts: List[int], redactor: agproxy.Redactor) -> bytes:
    """The bytes a client receives: the events in batches cut at ``cuts``, through the stream's
    redactor and then the one every response goes through."""
    deltas = agproxy.DeltaRedactor(redactor)
    bounds = [0] + sorted({c % (len(events) + 1) for c in cuts}) + [len(events)]
    return b"".join(redactor.data(deltas.feed(b"".join(events[a:b]))) for a, b in zip(bounds, bounds[1:]))


def joined_text(stream: bytes) -> Tuple[str, List[str]]:
    """The block's text as a client joins it, and the event types it received in order."""
    text, kinds = "", []
    for event in agproxy.SSEDecoder().feed(stream):
        payload = json.loads(event.data)
        kinds.append(payload["type"])
        if payload["type"] == "content_block_start":
            text += next((v for k, v in payload["content_block"].items() if k in ("text", "thinking")), "")
        elif payload["type"] == "content_block_delta":
            text += next(v for k, v in payload["delta"].items() if k != "type")
    return text, kinds


def cut(text: str, points: List[int]) -> List[str]:
    bounds = [0] + sorted({p % (len(text) + 1) for p in points}) + [len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


@settings(max_examples=400, deadline=None)
@given(key=KEYS, how=st.sampled_from(["raw", "json", "url", "base64"]), prefix=st.sampled_from(["", "u:", "ab:"]),
       before=PROSE, after=PROSE, points=st.lists(st.integers(0, 200), max_size=12),
       block=st.sampled_from(sorted(DELTAS)), in_opening=st.integers(0, 6),
       style=st.sampled_from(["compact", "spaced", "ascii"]), cuts=st.lists(st.integers(0, 30), max_size=6))
def test_a_key_cut_across_deltas_never_reaches_the_client(key: str, how: str, prefix: str, before: str, after: str,
                                                          points: List[int], block: str, in_opening: int,
                                                          style: str, cuts: List[int]) -> None:
    """However the text is cut into deltas (and the block's opening text), however the events are
    batched and written, the text the client joins holds no spelling of the key, and the stream
    keeps its grammar (every delta before its block's stop)."""
    text = before + spelled(key, how, prefix) + after
    opening = "" if block == "tool_use" else text[:in_opening]
    stream = relayed(stream_of(cut(text[len(opening):], points), block, opening, style), cuts,
                     agproxy.Redactor([key]))
    client_text, kinds = joined_text(stream)
    assert key not in client_text and spelled(key, how, prefix) not in client_text, client_text
    assert key.encode() not in stream
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"], kinds


@settings(max_examples=300, deadline=None)
@given(key=KEYS, text=PROSE.filter(bool), points=st.lists(st.integers(0, 40), max_size=10),
       block=st.sampled_from(sorted(DELTAS)), style=st.sampled_from(["compact", "spaced", "ascii"]),
       cuts=st.lists(st.integers(0, 20), max_size=4))
def test_text_without_a_key_reaches_the_client_whole(key: str, text: str, points: List[int], block: str, style: str,
                                                     cuts: List[int]) -> None:
    """What the stream's redactor holds back it sends on: a text without the key comes out whole."""
    redactor = agproxy.Redactor([key])
    assume(not any(s in text for s in redactor.spellings))
    # a text that ends in a key's first 8 characters or more is sent as [redacted] (a key cut short)
    assume(not any(s.startswith(text[-n:]) for s in redactor.spellings for n in range(8, len(text) + 1)))
    stream = relayed(stream_of(cut(text, points), block, "", style), cuts, redactor)
    assert joined_text(stream)[0] == text


def test_a_plain_delta_that_cannot_begin_a_key_passes_as_it_came() -> None:
    """The fast path: nearly every delta is neither decoded nor rewritten."""
    redactor = agproxy.Redactor(["sk-upstream-SECRET-0123456789"])
    batch = b"".join(agproxy.encode_sse_json("content_block_delta", {
        "type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}})
        for word in ["Hello", " wor", "ld\\n", " \u00e9t\u00e9"])
    assert agproxy.DeltaRedactor(redactor).feed(batch) is batch


# -- every credential of the config is a secret --------------------------------------------------------

def test_a_key_escaped_in_a_tool_input_and_cut_after_its_backslash_never_reaches_the_client() -> None:
    """A tool input's JSON source that spells a key's first letter as an escape (``\\u0073k-...``),
    cut right after the backslash: a backslash alone cannot begin the key, but the escape it opens
    can, so it is held (the plain path passed it on, and the key arrived whole)."""
    key = "sk-ant-api03-" + "A" * 40
    source = '{"k": "\\u0073' + key[1:] + '"}'
    cut_at = source.index("\\") + 1
    for style in ("compact", "spaced"):
        events = stream_of([source[:cut_at], source[cut_at:]], "tool_use", "", style)
        text, _ = joined_text(relayed(events, [], agproxy.Redactor([key])))
        assert key not in json.loads(text)["k"] and key[1:] not in text


def test_every_credential_the_config_holds_is_a_secret() -> None:
    basic = base64.b64encode(b"me:basic-password-123").decode()
    raw = {"api_key": "client-key-0123456789", "upstreams": [{
        "name": "u", "kind": "openai", "base_url": "http://127.0.0.1:9/v1",
        "accounts": [{"name": "a", "api_key": "account-key-0123456789"}],
        "headers": {"X-Gateway-Token": 'gw-"token"\\0123', "Proxy-Basic-Auth": f"Basic {basic}",
                    "X-Tenant": "${TENANT_SECRET}", "Cookie": "session=cookie-value-0123; theme=dark",
                    "X-Forwarded-Key-Like": "sk-looks-like-a-key-0123", "anthropic-version": "2023-06-01",
                    "HTTP-Referer": "https://example.com/app"},
        "extra_body": {"provider": {"auth": {"api_key": "extra-body-key-0123"}}, "route": "fallback-route"}}]}
    config = agproxy.config_from_dict(raw, {"TENANT_SECRET": "tenant-secret-0123"}, "test")
    secrets = config.secrets({"HTTPS_PROXY": "http://proxyuser:proxy%40pass-0123@proxy.example:3128"})
    for secret in ("client-key-0123456789", "account-key-0123456789", 'gw-"token"\\0123', basic,
                   "basic-password-123", "tenant-secret-0123", "cookie-value-0123", "sk-looks-like-a-key-0123",
                   "extra-body-key-0123", "proxy@pass-0123",
                   base64.b64encode(b"proxyuser:proxy@pass-0123").decode()):
        assert secret in secrets, secret
    redactor = agproxy.Redactor(secrets)
    for plain in ("2023-06-01", "https://example.com/app", "fallback-route", "theme=dark"):
        assert redactor.text(f"said {plain}.") == f"said {plain}.", plain
    assert "tenant-secret-0123" not in redactor.text("echo: tenant-secret-0123")


def test_check_never_prints_an_echoed_header_credential(tmp_path: Any) -> None:
    """``agproxy check`` against an upstream whose 401 echoes the request's headers (the credential
    of the upstream's ``headers`` JSON-escaped, base64 and URL-encoded among them)."""
    with MisbehavingUpstream() as fake:
        config = {"upstreams": [{"name": "u", "kind": "anthropic",
                                 "base_url": fake.url_for("echo_header_credentials_401", "anthropic", "check"),
                                 "headers": ECHO_HEADERS, "accounts": [{"name": "a", "api_key": ALICE_KEY}]}]}
        path = write_config(tmp_path, config)
        result = subprocess.run([sys.executable, str(AGPROXY), "check", "--config", str(path)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=30, env=clean_env(HOME=str(tmp_path)))
    assert result.returncode == 1 and "rejected this account's key" in result.stdout, result.stdout + result.stderr
    said = result.stdout + result.stderr
    for secret in (HEADER_SECRET, ALICE_KEY):
        for how in ("raw", "json", "url", "base64"):
            assert spelled(secret, how, "gateway:" if how == "base64" else "") not in said, (how, said)


#: an account key that is not shaped like one (a local server's password), longer than the excerpts
UNSHAPED_KEY = "hunter2hunter2-local-secret-0123456789abcdef"


def _echoing_malformed(ctx: Any) -> List[Any]:
    """A stream that echoes the account's key where agproxy quotes an excerpt of it in its error:
    past the excerpt's length into a chunk that is not JSON, or as an event's name or type."""
    from tests.fakes.misbehaving import Send, anthropic_events, openai_events, response, sse
    start = b"data: {\"pad\": \"" + b"p" * 70 + ctx.key.encode() + b"\" broken\n\n"
    if ctx.kind == "openai":
        events = openai_events("Hi.", done=False)[:1] + [start]
    elif ctx.kind == "gemini":
        events = [start]
    elif ctx.mode == "named":  # an event named with the key, its data another type
        events = anthropic_events(ctx.model, "Hi.")[:2] + [sse(ctx.key, {"type": "ping"})]
    else:  # an event type outside the grammar, spelled with the key: dropped, and said in the log
        events = anthropic_events(ctx.model, "Hi.")
        events.insert(2, sse(ctx.key, {"type": ctx.key}))
    return [Send(response("200 OK", "text/event-stream", b"".join(events), framing="chunked"))]


def test_a_key_an_upstream_echoes_into_a_malformed_stream_is_not_cut_into_agproxys_words(start_agproxy: Any) -> None:
    """agproxy quotes the start of what it could not read (an excerpt, so many characters): a key
    that the cut falls inside is no longer the configured key the redactor hides, and its first
    part went out in the client's error, the log and the metrics."""
    import urllib.request

    import anthropic
    with MisbehavingUpstream({"echo": _echoing_malformed}) as fake:
        upstreams = [{"name": name, "kind": kind, "base_url": fake.url_for("echo", kind, mode),
                      "accounts": [{"name": "alice", "api_key": UNSHAPED_KEY}], "timeout_s": 5}
                     for name, kind, mode in (("o", "openai", "s"), ("g", "gemini", "s"),
                                              ("named", "anthropic", "named"), ("unknown", "anthropic", "unknown"))]
        proxy = start_agproxy({"auth_mode": "off", "state_file": "", "max_retry_attempts": 1, "upstreams": upstreams,
                               "model_map": [{"match": f"{u['name']}-*", "upstream": u["name"]} for u in upstreams]})
        client = anthropic.Anthropic(base_url=proxy.url, api_key="client", max_retries=0, timeout=20)
        said = []
        for name in ("o", "g", "named", "unknown"):
            try:
                said.append(str(client.messages.create(model=f"{name}-m", max_tokens=10,
                                                       messages=[{"role": "user", "content": "hi"}])))
            except anthropic.APIError as exc:
                said.append(str(exc))
        assert "not JSON" in said[0] and "not JSON" in said[1] and "named" in said[2], said
        for path in ("/metrics", "/v1/agproxy/stats", "/v1/agproxy/accounts"):
            with urllib.request.urlopen(proxy.url + path, timeout=10) as answer:
                said.append(answer.read().decode())
        said.append(proxy.log())
    for text in said:
        assert UNSHAPED_KEY[:12] not in text, text[:3000]


def _echoing_framing(ctx: Any) -> List[Any]:
    """An answer whose framing echoes the account's key where agproxy's excerpt of it ends: in a
    malformed status line, a Content-Length or a chunk size line."""
    from tests.fakes.misbehaving import Send
    key = ctx.key.encode()
    if ctx.mode == "status":  # (the excerpt: 80 characters)
        return [Send(b"HTTP/1.1 2x0 " + b"p" * 50 + key + b"\r\nContent-Length: 0\r\n\r\n")]
    if ctx.mode == "length":  # (40)
        return [Send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1" + b"p" * 20 + key
                     + b"\r\n\r\n")]
    return [Send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"10pp" + key + b"\r\n")]  # (20)


@pytest.mark.parametrize("mode", ["status", "length", "chunk"])
def test_a_key_an_upstream_echoes_into_its_framing_is_not_cut_into_agproxys_words(start_agproxy: Any,
                                                                                  mode: str) -> None:
    """The HTTP parser quotes a malformed status line, Content-Length or chunk size line in part:
    a key the cut fell inside went out in part in the client's error and the log."""
    import anthropic
    with MisbehavingUpstream({"echo": _echoing_framing}) as fake:
        proxy = start_agproxy({"auth_mode": "off", "state_file": "", "max_retry_attempts": 1, "upstreams": [
            {"name": "a", "kind": "anthropic", "base_url": fake.url_for("echo", "anthropic", mode),
             "accounts": [{"name": "alice", "api_key": UNSHAPED_KEY}], "timeout_s": 5}]})
        client = anthropic.Anthropic(base_url=proxy.url, api_key="client", max_retries=0, timeout=20)
        with pytest.raises(anthropic.APIError) as caught:
            client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}],
                                   stream=mode == "chunk")
        said = [str(caught.value), proxy.log()]
    assert "malformed" in said[0] or "invalid" in said[0], said[0]
    for text in said:
        assert UNSHAPED_KEY[:12] not in text, text[:3000]


@settings(max_examples=500)
@given(st.text(st.sampled_from("ab \n\t{}\"é"), max_size=60), KEYS.filter(lambda k: not any(c.isspace() for c in k)),
       st.text(st.sampled_from("ab \n{}\"é"), max_size=300), st.integers(1, 120))
def test_an_excerpt_never_ends_inside_a_key(before: str, key: str, after: str, limit: int) -> None:
    """Wherever a key sits, an excerpt of the text holds all of it or none of it, starts the text, and
    is cut where asked when that cuts no run of characters without a blank."""
    text = before + key + after
    cut = agproxy.excerpt(text, limit)
    assert text.startswith(cut) and len(cut) <= 2 * limit + 1
    start = len(before)
    assert len(cut) <= start or len(cut) >= start + len(key)
    if len(text) <= limit or text[limit - 1].isspace() or text[limit].isspace():
        assert cut == text[:limit]
