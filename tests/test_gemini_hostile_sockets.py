"""The Gemini kind end to end over real sockets and under concurrency, from a third attack (each
test that failed then held a defect, fixed since; the others guard what held up).

Clients that leave mid-stream or while Gemini still thinks, many streams at once, stalls, huge
signatures, side routes (count_tokens, /v1/models, ``agproxy check``) against hostile Gemini
upstreams, key echoes into every place agproxy writes (answers, pages, the log, the state
file), header and log injection through model names."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any, Dict, List, Tuple

import pytest

import agproxy
from tests.conftest import AGPROXY, RESET_HANG_UPS, clean_env, hang_up_on_a_fake, write_config
from tests.fakes.gemini_upstream import Answer, FakeGemini, google_error
from tests.fakes.misbehaving import (
    Ctx,
    MisbehavingUpstream,
    Send,
    Sleep,
    Trickle,
    gemini_answer,
    head,
    response,
)

PRO = "gemini-3-pro-preview"
KEY = "gm-secret-key-0123456789abcdef"  # not shaped like AIza...: only the configured-key redaction hides it
KEY2 = "gm-secret-key-second-9876543210"


TOOLS = [{"name": "Read", "description": "Read a file", "input_schema": {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}]


# -- helpers --------------------------------------------------------------------------------------

def mis_config(mis: MisbehavingUpstream, case: str, mode: str = "m", keys=(KEY,),
               **upstream: Any) -> Dict[str, Any]:
    up = {"name": "gemini", "kind": "gemini", "base_url": mis.url_for(case, "gemini", mode),
          "accounts": [{"name": f"key-{i + 1}", "api_key": k} for i, k in enumerate(keys)]}
    top = {k: upstream.pop(k) for k in ("max_retry_attempts",) if k in upstream}
    up.update(upstream)
    rules = [{"match": "*", "upstream": "gemini", "model": PRO}]
    return dict({"state_file": "", "upstreams": [up], "model_map": rules}, **top)


def body(stream: bool = True, model: str = "claude-sonnet-4-5", **extra: Any) -> bytes:
    data = {"model": model, "max_tokens": 50, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    data.update(extra)
    return json.dumps(data).encode()


def post_raw(port: int, path: str, data: bytes) -> bytes:
    return (b"POST %b HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
            % (path.encode(), len(data), data))


def http(proxy: Any, method: str, path: str, data: bytes = None,
         timeout: float = 60) -> Tuple[int, Dict[str, str], bytes]:
    request = urllib.request.Request(proxy.url + path, data, {"content-type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def accounts(proxy: Any) -> List[Dict[str, Any]]:
    return json.loads(http(proxy, "GET", "/v1/agproxy/accounts")[2])["accounts"]


def wait_for(predicate, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def chunk(piece: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(piece), piece)


def sse_head() -> bytes:
    return head("200 OK", [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")])


def text_event(text: str) -> bytes:
    ev = gemini_answer(text)
    del ev["candidates"][0]["finishReason"]
    return b"data: " + json.dumps(ev).encode() + b"\r\n\r\n"


def everything_written(proxy: Any, answers: List[bytes]) -> str:
    """Every byte agproxy wrote: the answers given, its pages, its log."""
    pages = [http(proxy, "GET", p)[2] for p in ("/v1/agproxy/accounts", "/v1/agproxy/stats", "/v1/models")]
    return "\n".join(x.decode("utf-8", "replace") for x in answers + pages) + proxy.log()


# -- clients that leave --------------------------------------------------------------------------

def _streaming_forever(ctx: Ctx):
    if ctx.count or "models" == ctx.path.rsplit("/", 1)[-1].split("?")[0]:
        return [Send(response("200 OK", "application/json", b'{"totalTokens": 3}'))]
    return [Send(sse_head() + chunk(text_event("thinking out loud"))),
            Trickle(chunk(text_event(" more")), every_s=0.1, for_s=60)]


def _thinking_forever(ctx: Ctx):
    return [Sleep(60)]


def test_clients_leaving_mid_stream_free_the_slot_and_the_upstream(start_agproxy):
    """max_concurrency 1: ten clients one after the other each read the start of a stream Gemini
    never ends, then hang up. Each must get its stream (so the slot of the one before came free)
    and agproxy must hang up on Gemini each time."""
    with MisbehavingUpstream({"forever": _streaming_forever}) as mis:
        config = mis_config(mis, "forever", timeout_s=120)
        config["upstreams"][0]["accounts"][0]["max_concurrency"] = 1
        proxy = start_agproxy(config)
        for n in range(10):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=40) as sock:
                sock.sendall(post_raw(proxy.port, "/v1/messages", body()))
                got = b""
                while b"text_delta" not in got:
                    piece = sock.recv(65536)
                    assert piece, got
                    got += piece
                assert got.startswith(b"HTTP/1.1 200"), got[:200]
            assert wait_for(lambda n=n: len(mis.abandoned) >= n + 1, 15), f"upstream {n} not hung up on"
        assert wait_for(lambda: accounts(proxy)[0]["in_flight"] == 0, 10), accounts(proxy)


def test_many_clients_leaving_while_gemini_still_thinks_are_all_noticed(start_agproxy):
    """Thirty clients send a streaming request and close their sockets before a byte comes back
    (Gemini is still thinking: nothing is sent before its first chunk). agproxy must cancel every
    upstream request, free every slot, and still serve the next client."""
    with MisbehavingUpstream({"think": _thinking_forever}) as mis:
        config = mis_config(mis, "think", timeout_s=120)
        proxy = start_agproxy(config)
        socks = []
        for _ in range(30):
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            sock.sendall(post_raw(proxy.port, "/v1/messages", body()))
            socks.append(sock)
        assert wait_for(lambda: len(mis.seen) >= 30, 15)
        for sock in socks:
            sock.close()
        assert wait_for(lambda: len(mis.abandoned) >= 30, 20), f"{len(mis.abandoned)} of 30 upstreams hung up on"
        assert wait_for(lambda: accounts(proxy)[0]["in_flight"] == 0, 10), accounts(proxy)


def test_a_non_streaming_client_that_leaves_while_gemini_streams_is_noticed(start_agproxy):
    """force_stream_internally (the default): a non-streaming client waits for the whole answer
    while agproxy streams from Gemini; when that client hangs up, the upstream stream must end."""
    with MisbehavingUpstream({"forever": _streaming_forever}) as mis:
        proxy = start_agproxy(mis_config(mis, "forever", timeout_s=120))
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        sock.sendall(post_raw(proxy.port, "/v1/messages", body(stream=False)))
        assert wait_for(lambda: len(mis.seen) >= 1, 10)
        time.sleep(0.5)
        sock.close()
        assert wait_for(lambda: len(mis.abandoned) >= 1, 20), "upstream stream kept going for a client that left"
        assert wait_for(lambda: accounts(proxy)[0]["in_flight"] == 0, 10), accounts(proxy)


@pytest.mark.parametrize("how", RESET_HANG_UPS)
def test_the_fake_counts_a_hang_up_by_reset_as_abandoned(how):
    """What the test above relies on: agproxy abandons an upstream stream with an abort, and a socket
    closed with bytes still unread in it (a trickle that came after agproxy's last read, likely on a
    loaded machine) is reset, not ended with a FIN. The fake must record that as abandoned too: it
    once watched for a FIN only, met the reset as an error at its next write and stopped without a
    record, so the test above failed (once in six suite runs) although agproxy had let go at once."""
    with MisbehavingUpstream({"forever": _streaming_forever}) as mis:
        hang_up_on_a_fake(mis.port, f"/c/forever/gemini/m/v1beta/models/{PRO}:streamGenerateContent?alt=sse",
                          body(), how)
        assert wait_for(lambda: len(mis.abandoned) >= 1, 5), f"the fake missed a hang-up by {how}"


# -- many streams, stalls, big signatures -----------------------------------------------------------

def test_a_hundred_slow_gemini_streams_at_once_all_finish_whole(start_agproxy):
    words = [f"word{i:03d}-padding " for i in range(12)]
    with FakeGemini(keys=(KEY,)) as fake:
        fake.script(*[Answer([{"text": w} for w in words], delay_s=0.05) for _ in range(100)])
        config = {"state_file": "", "upstreams": [{"name": "gemini", "kind": "gemini", "base_url": fake.url,
                                                   "accounts": [{"name": "k", "api_key": KEY}]}],
                  "model_map": [{"match": "*", "upstream": "gemini", "model": PRO}], "ping_interval_s": 0.05}
        proxy = start_agproxy(config)

        def one(_: int) -> str:
            status, _, data = http(proxy, "POST", "/v1/messages", body(), timeout=120)
            assert status == 200, data[:300]
            acc = agproxy.MessageAccumulator()
            for event in agproxy.SSEDecoder().feed(data):
                acc.feed(event)
            msg = acc.result()
            return "".join(b.get("text", "") for b in msg["content"] if b["type"] == "text")

        with concurrent.futures.ThreadPoolExecutor(100) as pool:
            texts = list(pool.map(one, range(100)))
        assert all(t == "".join(words) for t in texts), [t for t in texts if t != "".join(words)][:2]
        assert accounts(proxy)[0]["in_flight"] == 0


def _stall_after_one(ctx: Ctx):
    return [Send(sse_head() + chunk(text_event("partial"))), Sleep(60)]


@pytest.mark.parametrize("stream", [True, False])
def test_a_gemini_stream_that_stalls_ends_by_timeout_s_and_hangs_up(start_agproxy, stream):
    with MisbehavingUpstream({"stall": _stall_after_one}) as mis:
        proxy = start_agproxy(mis_config(mis, "stall", timeout_s=2, max_retry_attempts=1))
        status, _, data = http(proxy, "POST", "/v1/messages", body(stream=stream), timeout=40)
        if stream:
            assert status == 200 and b"event: error" in data and b"message_stop" not in data, data[-400:]
        else:
            assert status >= 500, (status, data[:300])
        assert wait_for(lambda: len(mis.abandoned) >= 1, 10)


def _huge_signature(ctx: Ctx):
    ev = gemini_answer("done")
    ev["candidates"][0]["content"]["parts"] = [{"functionCall": {"name": "Read", "args": {"path": "a"}, "id": "c1"},
                                                "thoughtSignature": "A" * (10 * 1024 * 1024)}]
    data = b"data: " + json.dumps(ev).encode() + b"\r\n\r\n"
    return [Send(sse_head() + chunk(data) + b"0\r\n\r\n")]


def test_ten_megabyte_signatures_in_parallel_keep_memory_bounded(start_agproxy, tmp_path):
    """Four clients at once each get a 10 MB signature (within the 16 MB event bound), twice; the
    process must answer them all and not hold on to them (RSS measured after)."""
    with MisbehavingUpstream({"huge": _huge_signature}) as mis:
        proxy = start_agproxy(mis_config(mis, "huge", timeout_s=60), process=True)

        def rss() -> int:
            with open(f"/proc/{proxy.proc.pid}/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024

        def one(_: int) -> int:
            status, _, data = http(proxy, "POST", "/v1/messages", body(tools=TOOLS), timeout=120)
            assert status == 200 and b"message_stop" in data, data[-300:]
            return len(data)

        for _ in range(2):
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                sizes = list(pool.map(one, range(4)))
            assert all(s > 10 * 1024 * 1024 for s in sizes), sizes
        time.sleep(1)
        assert rss() < 700 * 1024 * 1024, rss()


# -- side routes against hostile upstreams ----------------------------------------------------------

def _hostile_side(ctx: Ctx):
    mode = ctx.mode
    if ctx.count or "/models" in ctx.path and ctx.method == "GET":
        if mode == "hang":
            return [Sleep(60)]
        if mode == "trickle":
            return [Send(head("200 OK", [("Content-Type", "application/json"), ("Content-Length", "100000")])),
                    Trickle(b" ", every_s=0.1, for_s=60)]
        if mode == "garbage":
            return [Send(response("200 OK", "application/json", b"\x00\xff{{{ not json"))]
        if mode == "echo":
            return [Send(response("200 OK", "application/json", json.dumps(
                {"models": [{"name": f"models/{ctx.key}", "displayName": f"key {ctx.key}"}],
                 "totalTokens": 7, "note": ctx.key}).encode()))]
        if mode == "pages":  # every page points to a next one, a new token each time
            return [Send(response("200 OK", "application/json", json.dumps(
                {"models": [{"name": f"models/m{ctx.attempt}"}], "nextPageToken": f"t{ctx.attempt}"}).encode()))]
    return [Send(response("200 OK", "application/json", json.dumps(gemini_answer()).encode()))]


@pytest.mark.parametrize("mode", ["hang", "trickle", "garbage", "echo"])
def test_count_tokens_against_a_hostile_gemini_answers_soon_and_never_leaks(start_agproxy, mode):
    with MisbehavingUpstream({"side": _hostile_side}) as mis:
        proxy = start_agproxy(mis_config(mis, "side", mode, connect_timeout_s=1))
        start = time.monotonic()
        status, _, data = http(proxy, "POST", "/v1/messages/count_tokens",
                               json.dumps({"model": "claude-sonnet-4-5",
                                           "messages": [{"role": "user", "content": "hi"}]}).encode())
        assert status == 200 and json.loads(data)["input_tokens"] > 0, data
        assert time.monotonic() - start < 15
        assert KEY not in everything_written(proxy, [data])


@pytest.mark.parametrize("mode", ["hang", "trickle", "garbage", "echo", "pages"])
def test_models_against_a_hostile_gemini_answer_and_never_leak(start_agproxy, mode):
    with MisbehavingUpstream({"side": _hostile_side}) as mis:
        config = mis_config(mis, "side", mode, connect_timeout_s=1)
        config["model_map"].insert(0, {"match": "gemini-*", "upstream": "gemini"})
        proxy = start_agproxy(config)
        status, _, data = http(proxy, "GET", "/v1/models")
        assert status == 200 and json.loads(data)["data"], data
        assert KEY not in everything_written(proxy, [data])
        if mode == "pages":
            assert len(mis.seen) <= 25


def test_concurrent_model_lists_against_a_slow_gemini_do_not_fan_out(start_agproxy):
    """Twenty clients ask /v1/models at once while Gemini's model list is slow; agproxy should ask
    Gemini once (its answer is cached a minute), not once per client: a fan-out of list calls under
    the account's key burns its quota. Counted: list requests reaching the upstream."""
    def slow_list(ctx: Ctx):
        return [Sleep(0.5), Send(response("200 OK", "application/json", json.dumps(
            {"models": [{"name": "models/gemini-3-pro-preview"}]}).encode()))]

    with MisbehavingUpstream({"slowlist": slow_list}) as mis:
        config = mis_config(mis, "slowlist", connect_timeout_s=5)
        proxy = start_agproxy(config)
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda _: http(proxy, "GET", "/v1/models")[0], range(20)))
        assert results == [200] * 20
        lists = [s for s in mis.seen if "/models" in s.path]
        assert len(lists) <= 2, f"{len(lists)} model-list requests reached Gemini for 20 concurrent clients"


@pytest.mark.parametrize("mode", ["hang", "garbage", "echo", "pages", "reject_echo"])
def test_check_against_a_hostile_gemini_ends_and_never_prints_the_key(tmp_path, mode):
    def side(ctx: Ctx):
        if ctx.mode == "reject_echo":
            message = "API key not valid. " + "x" * 150 + f" you sent {ctx.key}"
            return [Send(response("400 Bad Request", "application/json", json.dumps(
                google_error(400, message, "INVALID_ARGUMENT", [
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}])).encode()))]
        return _hostile_side(ctx)

    with MisbehavingUpstream({"side": side}) as mis:
        config = mis_config(mis, "side", mode, connect_timeout_s=1)
        path = write_config(tmp_path, config)
        run = subprocess.run([sys.executable, str(AGPROXY), "check", "--config", str(path)], capture_output=True,
                             text=True, timeout=90, env=clean_env(HOME=str(tmp_path)), cwd=tmp_path)
        out = run.stdout + run.stderr  # DEFECT (reject_echo): _probe cuts said[0][:200] before redaction
        assert "gemini" in out
        for n in range(12, len(KEY) + 1):  # no piece of the key either (a truncated echo)
            assert KEY[:n] not in out, (KEY[:n], out)


# -- key echoes into pages, answers and the state file ------------------------------------------------

def _reject_echoing(ctx: Ctx):
    pad = "x" * int(ctx.mode) if ctx.mode.isdigit() else ""
    message = f"API key not valid. {pad} Please pass a valid API key, not {ctx.key}."
    return [Send(response("400 Bad Request", "application/json", json.dumps(
        google_error(400, message, "INVALID_ARGUMENT", [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}])).encode()))]


@pytest.mark.parametrize("pad", ["0", "90"])
def test_a_rejection_that_echoes_the_key_leaks_no_piece_of_it(start_agproxy, tmp_path, pad):
    """Gemini's 400 API_KEY_INVALID quoting the key sent (a gateway in front of it may): the key
    must appear nowhere (answer, accounts page, stats, log, state file), not even cut short where
    agproxy truncates the upstream's words (pad moves the key across those cuts).

    DEFECT: the state file keeps the account's ``reason`` unredacted (the whole key), and the
    reason and the 502 are cut (``failure[:170]``, ``message[:300]``) before the redactor sees
    them, so a cut key passes it. Fix: redact upstream words when they enter Outcome/reason
    (Redactor.text before any truncation), and redact the state snapshot too."""
    with MisbehavingUpstream({"echo": _reject_echoing}) as mis:
        config = mis_config(mis, "echo", pad)
        config["state_file"] = str(tmp_path / "state.json")
        proxy = start_agproxy(config)
        answers = [http(proxy, "POST", "/v1/messages", body(stream=s))[2] for s in (False, True, False)]
        proxy.stop()
        written = everything_written_after_stop(proxy, answers, tmp_path / "state.json")
        for n in range(12, len(KEY) + 1):
            assert KEY[:n] not in written, (KEY[:n], [line for line in written.splitlines() if KEY[:n] in line][:3])


def everything_written_after_stop(proxy: Any, answers: List[bytes], state: Any) -> str:
    text = "\n".join(a.decode("utf-8", "replace") for a in answers) + proxy.log()
    return text + (state.read_text() if state.exists() else "")


def test_the_accounts_page_never_shows_a_piece_of_an_echoed_key(start_agproxy):
    with MisbehavingUpstream({"echo": _reject_echoing}) as mis:
        for pad in ("85", "90", "95"):
            proxy = start_agproxy(mis_config(mis, "echo", pad))
            http(proxy, "POST", "/v1/messages", body(stream=False))
            page = http(proxy, "GET", "/v1/agproxy/accounts")[2].decode()
            again = http(proxy, "POST", "/v1/messages", body(stream=False))[2].decode()
            for n in range(12, len(KEY) + 1):
                assert KEY[:n] not in page + again, (pad, KEY[:n], page, again)


# -- header, URL and log injection through the model name --------------------------------------------

@pytest.mark.parametrize("evil", ["gemini-3-pro-preview\r\nX-Evil: 1", "gemini-3-pro-preview\nX-Evil: 1",
                                  "gemini-3-pro-preview\x00X-Evil: 1", "gemini-3-pro-preview\r\n\r\nHTTP/1.1 200 OK",
                                  "gemini-../../v1beta/models?key=x#y z", "gemini-\u2028agproxy listening on x"])
def test_a_model_name_cannot_inject_headers_paths_or_log_lines(start_agproxy, evil):
    with MisbehavingUpstream({"side": _hostile_side}) as mis:
        config = mis_config(mis, "side", "ok")
        config["model_map"] = [{"match": "gemini-*", "upstream": "gemini"}]
        config["log_level"] = "debug"
        proxy = start_agproxy(config)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
            sock.sendall(post_raw(proxy.port, "/v1/messages", body(stream=False, model=evil)))
            data = b""
            while b"\r\n\r\n" not in data:
                piece = sock.recv(65536)
                if not piece:
                    break
                data += piece
        head_block = data.split(b"\r\n\r\n", 1)[0]
        assert not any(line.lower().startswith(b"x-evil") for line in head_block.split(b"\r\n")), head_block
        lines = head_block.split(b"\r\n")
        assert b"\x00" not in head_block and not any(line.startswith(b"HTTP/") for line in lines[1:]), head_block
        for seen in mis.seen:
            assert not any(c in seen.path for c in "\r\n\x00 #"), seen.path
            assert "/../" not in seen.path and "key=" not in seen.path, seen.path
        for line in proxy.log().splitlines():
            assert not line.startswith(("X-Evil", "HTTP/1.1", "agproxy listening on x")), proxy.log()


# -- the state file across processes -------------------------------------------------------------------

def _limited(ctx: Ctx):
    return [Send(response("429 Too Many Requests", "application/json", json.dumps(google_error(
        429, "quota", "RESOURCE_EXHAUSTED", [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                              "retryDelay": "600s"}])).encode()))]
