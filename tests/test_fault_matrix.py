"""The fault matrix: every misbehaviour of ``tests/fakes/misbehaving.py`` x upstream kind x way of
asking, through real agproxy processes, with what the client must see.

Ways of asking (``mode``): ``stream`` (a streaming client), ``forced`` (a non-streaming client;
agproxy streams upstream internally, its default), ``json`` (non-streaming end to end:
``force_stream_internally`` off) and ``count`` (``/v1/messages/count_tokens``; forwarded to an
``anthropic`` upstream, counted with ``/tokenize`` of an ``openai`` one, with the local estimate
as fallback). Each (kind, mode, case) has its own upstream and two accounts in agproxy's config,
so cases cannot disturb each other, and they all run at once (the matrix costs the wall time of
its slowest case, a few timeouts). Each test then checks one result.

Invariants for every answer (``tests/wire_check.py``): a well-formed HTTP/1.1 response read
strictly off the socket; never a connection closed without one; no CR, LF or NUL in a header; no
500 unless the case expects the upstream's own 500; errors in the Anthropic shape; no upstream key
in any byte (or in agproxy's log); a stream ends with ``message_stop`` or an ``error`` event;
never ``authentication_error``/``permission_error`` (auth is off here: such an error could only be
an upstream's, and Claude Code would take it as "log in again").
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import re
import socket
import struct
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Tuple

import pytest

from tests.conftest import Agproxy, alone_among_workers, clean_env, write_config
from tests.fakes.misbehaving import (
    ALICE_KEY,
    BOB_KEY,
    ECHO_HEADERS,
    ECHO_SECRETS,
    GROUPS,
    KEYS,
    RECIPES,
    KeepAlive,
    MisbehavingUpstream,
    Send,
    Sleep,
    Trickle,
    big_delta,
    events_of,
    good,
    message,
    response,
    sse_response,
)
from tests.wire_check import (
    Answer,
    generic_problems,
    get,
    leaked,
    message_problems,
    post_json,
    program_under_test,
    read_answer,
    stream_problems,
    strict_json,
)

KINDS = ("anthropic", "openai", "gemini")
MODES = ("stream", "forced", "json", "count")
#: the upstreams' timeout_s: short, so hangs are met quickly, yet long enough for the fake (a thread
#: of this process answering every case at once) on a loaded 2-core machine
UPSTREAM_TIMEOUT_S = 5
#: the cases that test size or framing, not time, get longer: a 4 MB event must arrive whole within
#: timeout_s, and the fake (a thread of this process) sends it slowly while 160 cases run at once
#: (Python 3.9); an answer in one-byte chunks is thousands of writes, which took over 5 s in CI
BIG_CASES = {"sse_one_byte_chunks": 12, "one_4mb_delta": 12, "many_small_events": 12, "body_huge": 20,
             "sse_line_20mb": 20, "oa_line_20mb": 20}
#: the timeout_s of a case whose answer no timeout decides (it allows no 504): a fake slowed by a
#: loaded machine (a thread of this process, with every other test file running beside it in CI)
#: must not turn a 402 into a 504; a fake that is not slowed answers at once, so it costs nothing
RELAXED_TIMEOUT_S = 12
#: how long one client waits for its whole answer: timeout_s x 2 attempts, plus slack
CLIENT_DEADLINE_S = max(BIG_CASES.values()) + 10.0


@dataclasses.dataclass(frozen=True)
class Expect:
    """What a client may see: a complete answer (``ok``), one of ``statuses`` (an error answer before
    any byte), or, for a stream, 200 and events ending with an ``error`` event (``event_error``)."""

    statuses: FrozenSet[int] = frozenset()
    ok: bool = False
    event_error: bool = False
    rate_limited: bool = False  # a 429 case: afterwards /v1/agproxy/accounts and a new request must work

    def describe(self) -> str:
        parts = []
        if self.ok:
            parts.append("a complete answer")
        if self.statuses:
            parts.append(" or ".join(str(s) for s in sorted(self.statuses)) + " with the Anthropic error shape")
        if self.event_error:
            parts.append("(for a stream) 200 ending with an error event")
        return "; or ".join(parts)


def _e(*statuses: int, ok: bool = False, event: bool = False, rate: bool = False) -> Expect:
    return Expect(frozenset(statuses), ok, event, rate)


OK = _e(ok=True)
FAIL = _e(502, event=True)  # upstream garbage: 502, or an error event once a stream has started
FAIL_T = _e(502, 504, event=True)  # ... where a timeout is what tells it
EARLY = _e(502)  # garbage agproxy sees before it could have sent anything
EARLY_T = _e(502, 504)
ANY = _e(502, ok=True, event=True)  # malformed but maybe tolerable: a proper answer or a proper failure
ANY_T = _e(502, 504, ok=True, event=True)
RATE = _e(429, rate=True)
KEY_REJECTED = _e(424)  # agproxy's key refused: a 4xx Claude Code shows in agproxy's words (KEY_REJECTED_STATUS)


def status(code: int) -> Expect:
    return _e(code)


#: Expectations per case; a dict gives them per mode ("*" for the rest). Cases not listed: ANY.
EXPECT: Dict[str, Any] = {
    # status lines
    "status_000": EARLY, "status_099": EARLY, "status_600": EARLY, "status_999": EARLY, "status_204": EARLY,
    "status_2xx_nonnumeric": EARLY, "status_http2": EARLY, "status_101": EARLY, "status_199_alone": EARLY_T,
    "status_100_then_ok": OK, "status_301_no_location": EARLY, "status_302": EARLY,
    "status_400": status(400), "status_404": status(404), "status_418": status(418), "status_500": status(500),
    "status_503": status(503), "status_529": status(529), "status_599": status(599),
    "status_503_html": status(503), "status_400_not_json": status(400),
    "status_401_echo_key": KEY_REJECTED,
    "status_403_echo_key_html": EARLY,  # a 403 page: a firewall's (it may block words), not a key verdict
    "status_429_alice_then_ok": _e(ok=True, rate=True),
    # framing
    # (a body cut short or overlong may still hold the whole answer: ANY, but a complete answer must be valid)
    "cl_short": ANY, "cl_long": ANY, "cl_superscript": EARLY, "cl_negative": EARLY, "cl_abc": EARLY,
    "cl_plus": EARLY, "cl_arabic_digits": EARLY, "cl_huge": ANY, "cl_hex": EARLY, "cl_spaces_inside": EARLY,
    "cl_empty": EARLY, "cl_conflict": EARLY,
    "chunk_size_zz": FAIL, "chunk_size_negative": FAIL, "chunk_size_0x": FAIL, "chunk_size_20_hex_digits": FAIL,
    "chunk_size_empty": FAIL, "chunk_size_space_inside": FAIL, "chunk_size_superscript": FAIL,
    "chunk_size_too_big": ANY, "chunk_no_crlf_after_data": FAIL, "chunked_truncated": FAIL,
    "no_length_then_close": OK,
    # headers
    "header_100kb": ANY, "header_many": ANY,  # large, but agproxy may take it
    # bodies
    "body_html_200": EARLY, "body_not_json": EARLY, "body_json_not_message": EARLY, "body_json_array": EARLY,
    "body_json_scalar": EARLY, "body_empty_200": EARLY, "body_empty_sse": EARLY, "body_huge": EARLY,
    "body_json_when_sse_asked": {"stream": ANY, "*": OK},
    "body_sse_when_json_asked": {"count": EARLY, "*": OK},
    # well-formed but demanding: every one must be answered in full
    "sse_one_byte_chunks": OK, "many_small_events": OK, "one_4mb_delta": OK, "http10_close_delimited": OK,
    "early_hints_103": OK, "chunk_extensions_and_trailers": OK, "content_type_uppercase": OK,
    "sse_retry_and_id_fields": OK, "sse_unknown_event_type": OK,
    # connection
    "reset_after_request": EARLY, "close_before_any_byte": EARLY, "hang": EARLY_T,
    "close_mid_status_line": EARLY, "close_mid_headers": EARLY, "headers_then_hang": FAIL_T,
    "reset_mid_body": ANY, "slow_head_trickle": EARLY_T, "garbage_instead_of_http": EARLY,
    "ok_then_trailing_garbage": OK, "status_100_forever": EARLY_T,
    # Anthropic event streams
    "sse_error_mid_stream": _e(529, event=True), "sse_error_first": status(529),
    "sse_error_garbage": FAIL, "sse_error_echo_key": _e(500, 502, event=True),
    "sse_ends_before_final_event": FAIL, "sse_text_mentions_message_stop": FAIL, "sse_only_message_start": FAIL,
    "sse_half_event_then_end": FAIL,
    "sse_cr_line_endings": OK, "sse_crlf_line_endings": OK, "sse_bom_and_comments": OK,
    "sse_html_body": EARLY, "sse_line_20mb": FAIL, "sse_trickle_comments": FAIL_T, "sse_stall": FAIL_T,
    # OpenAI chunk streams
    "oa_error_chunk": _e(500, 502, event=True), "oa_error_chunk_code_string": _e(500, 502, event=True),
    "oa_error_chunk_code_1e400": _e(500, 502, event=True), "oa_error_chunk_code_999": _e(502, 500, event=True),
    "oa_error_echo_key": _e(502, event=True), "oa_no_finish_no_done": FAIL, "oa_line_20mb": FAIL,
    "oa_stall": FAIL_T, "oa_trickle_comments": FAIL_T,
    # OpenAI completions
    "oaj_error_200": _e(502, 429),
}
for _name in RECIPES:
    if _name.startswith("status_429_") and _name not in EXPECT:
        EXPECT[_name] = RATE

# upstream faults of issue 18: deep JSON, huge numbers, out of credit, out-of-grammar passthrough
CREDIT = _e(402)  # every account out of credit: a 402 billing_error naming the upstream
EXPECT.update({
    "deep_json_answer": {"count": EARLY, "*": FAIL}, "deepish_json_answer": {"count": EARLY, "*": FAIL},
    "deep_json_error_400": status(400), "deepish_json_error_400": status(400), "deep_json_error_503": status(503),
    "huge_counts_5000_digits": {"count": EARLY, "*": FAIL}, "huge_counts_4000_digits": {"count": EARLY, "*": ANY},
    "context_window_5000_digits": status(400), "context_window_4000_digits": status(400),
    "n_ctx_5000_digits": status(400), "n_ctx_4000_digits": status(400),
    "status_402": CREDIT, "out_of_credit": CREDIT, "out_of_credit_alice_then_ok": OK,
    "sse_ping_then_content_no_start": EARLY, "sse_no_message_start": EARLY, "sse_event_name_not_its_type": FAIL,
    "sse_second_message_start": FAIL, "sse_delta_before_block_start": FAIL, "sse_delta_after_block_stop": FAIL,
    "sse_block_started_twice": FAIL, "sse_no_event_names": OK, "sse_unknown_event_then_block": OK,
    "sse_lone_surrogate_first": OK, "sse_deep_json_first": EARLY,
})
#: cases whose every request must reach both accounts (the first failure is tried on the other)
BOTH_ACCOUNTS = ("deep_json_answer", "deepish_json_answer", "huge_counts_5000_digits", "status_402", "out_of_credit",
                 "out_of_credit_alice_then_ok", "sse_ping_then_content_no_start", "sse_no_message_start",
                 "sse_deep_json_first")

#: cases too heavy to run in every mode (tens of MB each)
ONLY_MODES = {"body_huge": ("json",), "sse_line_20mb": ("stream", "forced"), "oa_line_20mb": ("stream", "forced")}
#: ... or for every kind: the 64 MB bound on a whole answer is one read for every kind
ONLY_KINDS = {"body_huge": ("anthropic", "openai")}

# time bounds: an upstream that never reads the request's body is a 504 within timeout_s (tried on
# the other account, as any timeout); one that sends only keep-alives once its first block has
# begun (pings, comments, empty chunks) ends the stream with an error event within timeout_s
EXPECT.update({"body_never_read": status(504),
               "pings_only": {"stream": _e(event=True), "forced": _e(502, 504), "*": EARLY_T}})
#: the client's message is padded to this many bytes for these cases: more than the socket buffers
#: between agproxy and the fake hold, so that sending it waits for the upstream to read
REQUEST_PADDING = {"body_never_read": 6 * 1024 * 1024}
#: (sending goes the same way in every mode; two keep the matrix's load down)
ONLY_MODES["body_never_read"] = ("stream", "json")


def expectation(kind: str, mode: str, case: str) -> Expect:
    if kind in ("openai", "gemini") and mode == "count":
        return OK  # counted by the server (/tokenize, countTokens); whatever it does, the local estimate answers
    if mode == "count" and case.startswith("status_429"):
        return OK  # a count's own rate limit is answered with the local estimate, and rests no account
    value = EXPECT.get(case, ANY)
    if isinstance(value, dict):
        value = value.get(mode, value.get("*", ANY))
    return value


def runs() -> List[Tuple[str, str, str]]:
    out = []
    for case, group in GROUPS.items():
        kinds = {"http": KINDS, "sse": ("anthropic",), "oa_sse": ("openai",), "oa_json": ("openai",)}[group]
        modes = MODES if group == "http" else ("stream", "forced", "json")
        for kind in ONLY_KINDS.get(case, kinds):
            for mode in ONLY_MODES.get(case, modes):
                out.append((kind, mode, case))
    return out


RUNS = runs()


def timeout_for(case: str, short: float = UPSTREAM_TIMEOUT_S) -> float:
    """The upstream timeout_s of a case: ``short`` where a timeout is what the case tests (an
    expectation that allows a 504), longer for the size cases, else :data:`RELAXED_TIMEOUT_S`."""
    if case in BIG_CASES:
        return BIG_CASES[case]
    expects = EXPECT.get(case, OK)
    timed = any(504 in e.statuses for e in (expects.values() if isinstance(expects, dict) else [expects]))
    return short if timed else max(short, RELAXED_TIMEOUT_S)


def model_name(kind: str, mode: str, case: str) -> str:
    return f"{kind}.{mode}.{case}"


def config_for(fake: MisbehavingUpstream, modes: Tuple[str, ...], force_stream: bool, state: Path,
               kinds: Tuple[str, ...] = KINDS) -> Dict[str, Any]:
    upstreams, rules = [], []
    for kind, mode, case in RUNS:
        if mode not in modes or kind not in kinds:
            continue
        name = model_name(kind, mode, case)
        upstream: Dict[str, Any] = {
            "name": name, "kind": kind, "base_url": fake.url_for(case, kind, mode),
            "timeout_s": timeout_for(case), "connect_timeout_s": timeout_for(case),
            "accounts": [{"name": "alice@example.com", "api_key": ALICE_KEY},
                         {"name": "bob@example.com", "api_key": BOB_KEY}]}
        if kind == "openai" and mode == "count":
            upstream["openai"] = {"tokenize": "vllm"}
        upstream.update(CASE_UPSTREAM_FIELDS.get(case, {}))
        upstreams.append(upstream)
        rules.append({"match": name, "upstream": name})
    return {"auth_mode": "off", "max_retry_attempts": 2, "force_stream_internally": force_stream,
            "state_file": str(state), "upstreams": upstreams, "model_map": rules}


def request_body(kind: str, mode: str, case: str) -> Dict[str, Any]:
    body: Dict[str, Any] = {"model": model_name(kind, mode, case),
                            "messages": [{"role": "user", "content": "hello there"}]}
    if mode != "count":
        body["max_tokens"] = 64
    if mode == "stream":
        body["stream"] = True
    if case in REQUEST_PADDING:
        body["messages"][0]["content"] += " " + "x" * REQUEST_PADDING[case]
    return body


def ask(port: int, kind: str, mode: str, case: str, deadline: float = CLIENT_DEADLINE_S) -> Answer:
    path = "/v1/messages/count_tokens" if mode == "count" else "/v1/messages"
    return post_json(port, path, request_body(kind, mode, case), deadline,
                     [("anthropic-version", "2023-06-01"), ("x-api-key", "client-key-not-for-upstream")])


# -- judging one answer -----------------------------------------------------------------------------

def complete_answer_problems(mode: str, answer: Answer) -> List[str]:
    """Problems of a 200 answer that claims to be complete."""
    if mode == "stream":
        if answer.content_type != "text/event-stream":
            return [f"a streaming client got content-type {answer.content_type!r}, not text/event-stream"]
        end, problems = stream_problems(answer.body, strict_events=True)
        if end != "message_stop":
            problems.append(f"the stream ended with {end!r}, not message_stop")
        return problems
    if answer.content_type != "application/json":
        return [f"content-type {answer.content_type!r}, not application/json"]
    try:
        value = strict_json(answer.body)
    except (ValueError, UnicodeDecodeError) as exc:
        return [f"the body is not strict JSON ({exc})"]
    if mode == "count":
        tokens = value.get("input_tokens") if isinstance(value, dict) else None
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            return [f"count_tokens answered {json.dumps(value)[:200]}"]
        return []
    return message_problems(value)


def judge(kind: str, mode: str, case: str, answer: Answer, expect: Expect) -> List[str]:
    problems = generic_problems(answer, KEYS, allow_500=500 in expect.statuses)
    if answer.dropped or answer.status == 0:
        return problems or ["no answer"]
    if answer.timed_out:
        return problems + [f"no complete answer within {CLIENT_DEADLINE_S:.0f} s"]
    if answer.status == 500 and b"internal error in agproxy" in answer.body:
        problems.append("agproxy's own internal error")
    if answer.status in (401, 403) or b'"authentication_error"' in answer.body or \
            b'"permission_error"' in answer.body:
        problems.append("an upstream's failure reached the client as an authentication/permission error")
    if answer.status != 200:
        if answer.status not in expect.statuses:
            problems.append(f"status {answer.status} is not what the client should see")
        elif answer.status in (502, 504) and b'"api_error"' not in answer.body:
            problems.append(f"a {answer.status} whose error.type is not api_error")
        return problems
    if mode == "stream" and answer.content_type == "text/event-stream":
        end, stream_issues = stream_problems(answer.body, strict_events=False)
        problems += stream_issues
        if end == "message_stop" and expect.ok:
            problems += [p for p in complete_answer_problems(mode, answer) if p not in problems]
        elif end == "message_stop":
            problems.append("the stream finished with message_stop, but the upstream's answer was broken")
        elif end == "error" and not expect.event_error:
            problems.append("the stream ended with an error event; expected " + expect.describe())
        return problems
    if not expect.ok:
        problems.append("200, but the upstream's answer was broken")
    return problems + complete_answer_problems(mode, answer)


@dataclasses.dataclass
class Result:
    kind: str
    mode: str
    case: str
    expect: Expect
    answer: Answer
    problems: List[str]
    notes: List[str] = dataclasses.field(default_factory=list)

    def report(self) -> str:
        lines = [f"{self.kind}/{self.mode}/{self.case}", f"  expected: {self.expect.describe()}",
                 f"  agproxy:  {self.answer.describe(400)}"]
        lines += [f"  - {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def rate_limit_aftermath(port: int, kind: str, mode: str, case: str, expect: Expect) -> List[str]:
    """After a 429 with an absurd reset: the accounts page and a further request still work."""
    problems = []
    accounts = get(port, "/v1/agproxy/accounts", CLIENT_DEADLINE_S)
    problems += [f"/v1/agproxy/accounts: {p}" for p in generic_problems(accounts, KEYS)]
    if accounts.status != 200:
        problems.append(f"/v1/agproxy/accounts answered {accounts.status}: {accounts.body[:200]!r}")
    else:
        try:
            strict_json(accounts.body)
        except ValueError as exc:
            problems.append(f"/v1/agproxy/accounts is not strict JSON ({exc})")
    again = ask(port, kind, mode, case)
    problems += [f"the request after: {p}" for p in generic_problems(again, KEYS)]
    if again.status not in (200, 429):
        problems.append(f"the request after answered {again.status}: {again.body[:200]!r}")
    elif again.status == 200:
        problems += [f"the request after: {p}" for p in complete_answer_problems(mode, again)]
    retry_after = again.header("retry-after")
    if again.status == 429 and retry_after is not None and not re.fullmatch(r"\d{1,10}", retry_after):
        problems.append(f"the request after: agproxy's 429 says retry-after {retry_after[:40]!r}")
    return problems


def run_one(port: int, kind: str, mode: str, case: str) -> Result:
    expect = expectation(kind, mode, case)
    answer = ask(port, kind, mode, case)
    problems = judge(kind, mode, case, answer, expect)
    if expect.rate_limited and not answer.dropped:
        problems += rate_limit_aftermath(port, kind, mode, case, expect)
    return Result(kind, mode, case, expect, answer, problems)


# -- the matrix -------------------------------------------------------------------------------------

class Matrix:
    def __init__(self, fake: MisbehavingUpstream, proxies: Dict[str, Agproxy]) -> None:
        self.fake = fake
        self.proxies = proxies
        self.results: Dict[Tuple[str, str, str], Result] = {}
        self.elapsed = 0.0

    def proxy_for(self, kind: str, mode: str) -> Agproxy:
        return self.proxies[f"{kind}-{'json' if mode in ('json', 'count') else 'forced'}"]

    def run_all(self, runs: Iterable[Tuple[str, str, str]], run_one: Callable[..., Any], workers: int,
                tmp_path_factory: pytest.TempPathFactory) -> None:
        """Ask every run at once, ``workers`` at a time, taking turns with the other matrix across
        pytest workers (side by side on 2 busy cores their cases meet their timeouts); its results
        and how long it took are kept."""
        with alone_among_workers(tmp_path_factory, "fault-matrix"):
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = {run: pool.submit(run_one, self.proxy_for(run[0], run[1]).port, *run) for run in runs}
                for run, future in futures.items():
                    self.results[run] = future.result()
            self.elapsed = time.monotonic() - started


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    tmp = tmp_path_factory.mktemp("fault-matrix")
    home = tmp / "home"
    home.mkdir()
    with MisbehavingUpstream() as fake:
        proxies: Dict[str, Agproxy] = {}
        try:
            # one agproxy per kind and way of asking, so that the cases spread over the cores
            for kind, (way, modes, force) in itertools.product(KINDS, (("forced", ("stream", "forced"), True),
                                                                        ("json", ("json", "count"), False))):
                name = f"{kind}-{way}"
                path = write_config(tmp, config_for(fake, modes, force, tmp / f"state-{name}.json", (kind,)),
                                    f"{name}.json")
                proxies[name] = Agproxy(["--config", str(path), "--port", "0"], clean_env(HOME=str(home)), tmp,
                                        program_under_test())
            result = Matrix(fake, proxies)
            result.run_all(RUNS, run_one, 160, tmp_path_factory)
            yield result
        finally:
            for proxy in proxies.values():
                proxy.stop()


@pytest.mark.parametrize("kind, mode, case", RUNS, ids=[f"{k}-{m}-{c}" for k, m, c in RUNS])
def test_fault(matrix: Matrix, kind: str, mode: str, case: str) -> None:
    result = matrix.results[(kind, mode, case)]
    assert not result.problems, result.report()


def test_matrix_is_fast_and_the_fake_is_sound(matrix: Matrix) -> None:
    assert not matrix.fake.errors
    assert matrix.elapsed < 60, f"the matrix took {matrix.elapsed:.0f} s"


def test_an_upstream_not_reading_the_body_is_tried_on_each_account(matrix: Matrix) -> None:
    """The timeout of sending a request is a timeout like the others: the next account is tried."""
    for kind in KINDS:
        for mode in ("stream", "json"):
            keys = {seen.key for seen in matrix.fake.requests_for("body_never_read", kind, mode)}
            assert keys == {ALICE_KEY, BOB_KEY}, f"{kind}/{mode}: tried with {len(keys)} of the 2 accounts"


def test_agproxy_survives_the_matrix(matrix: Matrix) -> None:
    for name, proxy in matrix.proxies.items():
        assert proxy.proc.poll() is None, f"agproxy ({name}) exited with {proxy.proc.returncode}"
        health = get(proxy.port, "/healthz")
        assert health.status == 200 and not health.problems, health.describe()
        assert json.loads(health.body)["status"] == "ok"


def test_no_upstream_key_in_agproxy_log(matrix: Matrix) -> None:
    for name, proxy in matrix.proxies.items():
        log = proxy.log()
        found = leaked(log, KEYS)
        lines = [line for line in log.splitlines() if leaked(line, KEYS)]
        assert not found, f"agproxy ({name}) logged an upstream key:\n" + "\n".join(lines[:10])


def test_no_internal_error_in_agproxy_log(matrix: Matrix) -> None:
    """Every failure of an upstream is an expected one: nothing reaches agproxy's catch-all handlers."""
    problems = []
    for name, proxy in matrix.proxies.items():
        lines = proxy.log().splitlines()
        for i, line in enumerate(lines):
            if "internal error" in line or line.startswith("Traceback"):
                tail = next((lines[j] for j in range(i + 1, min(i + 80, len(lines)))
                             if re.match(r"^[A-Za-z_.]+(Error|Exception)\b", lines[j])), "")
                problems.append(f"{name}: {line.strip()[:200]} -> {tail[:200]}")
    distinct = sorted(set(problems))
    assert not distinct, f"{len(problems)} internal errors logged, {len(distinct)} distinct:\n" + "\n".join(
        distinct[:60])


# -- upstream faults of issue 18: retried elsewhere, rested, worded so that Claude Code shows them -------

#: cases that fail at the head of a stream, before the client has a byte (so they can be retried then)
HEAD_FAILURES = ("status_402", "out_of_credit", "out_of_credit_alice_then_ok", "sse_ping_then_content_no_start",
                 "sse_no_message_start", "sse_deep_json_first")


def test_an_upstream_fault_is_tried_on_the_other_account(matrix: Matrix) -> None:
    """Deep JSON, a number past int()'s digits, a stream outside the grammar, an account out of
    credit: each is the upstream's fault, so the request is tried on the other account."""
    once = []
    for kind, mode, case in RUNS:
        if case not in BOTH_ACCOUNTS or (mode == "count" and kind != "anthropic") or \
                (mode == "stream" and case not in HEAD_FAILURES):
            continue  # counted locally past a failed count; a stream that failed after it began
        if matrix.results[(kind, mode, case)].answer.status == 504:
            continue  # the fake did not answer in time (a loaded machine): test_fault reports it
        keys = {seen.key for seen in matrix.fake.requests_for(case, kind, mode)}
        if keys != set(KEYS):
            once.append(f"{kind}/{mode}/{case}: {len(keys)} account(s)")
    assert not once, "faults not tried on the other account: " + ", ".join(once)


def test_an_account_out_of_credit_rests_and_the_client_is_told_by_whom(matrix: Matrix) -> None:
    """A 402 (or Anthropic's 400 about the credit balance) rests that account (the next request goes
    straight to the other), is listed as out of credit, and when every account is out the client gets
    a 402 billing_error naming the upstream, without the words that make Claude Code show its own
    "Credit balance is too low · Add funds" (Anthropic's billing page, the wrong place for an upstream's
    account) instead of agproxy's message."""
    problems = []
    for kind in KINDS:
        for mode in MODES:
            if mode == "count" and kind != "anthropic":
                continue
            port = matrix.proxy_for(kind, mode).port
            before = len(matrix.fake.requests_for("out_of_credit_alice_then_ok", kind, mode))
            again = ask(port, kind, mode, "out_of_credit_alice_then_ok")
            asked = [seen.key for seen in matrix.fake.requests_for("out_of_credit_alice_then_ok", kind, mode)[before:]]
            if again.status != 200 or asked != [BOB_KEY]:
                problems.append(f"{kind}/{mode}: {again.status}, accounts asked: {len(asked)}")
            states = {a["account"]: a["state"] for a in json.loads(get(port, "/v1/agproxy/accounts").body)["accounts"]
                      if a["upstream"] == model_name(kind, mode, "out_of_credit_alice_then_ok")}
            if states != {"alice@example.com": "out_of_credit", "bob@example.com": "ok"}:
                problems.append(f"{kind}/{mode}: accounts {states}")
            for case in ("status_402", "out_of_credit"):
                answer = matrix.results[(kind, mode, case)].answer
                text = answer.body.decode("utf-8", "replace")
                if answer.status != 402 or '"billing_error"' not in text or model_name(kind, mode, case) not in text \
                        or re.search(r"(?i)credit balance (is )?too low", text) or \
                        answer.header("x-should-retry") != "false":
                    problems.append(f"{kind}/{mode}/{case}: {answer.describe(300)}")
    assert not problems, "\n".join(problems)


def test_stream_events_outside_the_grammar_are_dropped_or_mended(matrix: Matrix) -> None:
    """An event type the Messages grammar lacks is not relayed (and logged once per upstream); an
    event without a name gets its data's type; a lone surrogate becomes U+FFFD, as without a stream."""
    problems = []
    for case, absent in (("sse_unknown_event_type", b"content_block_future"),
                         ("sse_unknown_event_then_block", b"future_thing"),
                         ("sse_lone_surrogate_first", b"\\ud800"), ("sse_lone_surrogate", b"\\ud800")):
        answer = matrix.results[("anthropic", "stream", case)].answer
        if answer.status != 200 or absent in answer.body:
            problems.append(f"{case}: {absent!r} reached the client: {answer.describe(300)}")
    for case in ("sse_lone_surrogate_first", "sse_lone_surrogate"):
        body = matrix.results[("anthropic", "stream", case)].answer.body
        if b"\\ufffd" not in body and "\ufffd".encode() not in body:
            problems.append(f"{case}: no U+FFFD in the stream")
    named = matrix.results[("anthropic", "stream", "sse_no_event_names")].answer.body
    if b"event: content_block_delta\n" not in named:
        problems.append(f"sse_no_event_names: events left without names: {named[:300]!r}")
    log = matrix.proxies["anthropic-forced"].log()
    noted = [line for line in log.splitlines() if "'future_thing' events" in line]
    if len(noted) != 2:  # its stream and forced upstreams, once each
        problems.append(f"the dropped event type was logged {len(noted)} times: {noted}")
    assert not problems, "\n".join(problems)


# -- connection reuse after an upstream sent more than it framed ----------------------------------------

def test_bytes_after_a_framed_answer_do_not_answer_the_next_request(start_agproxy: Any) -> None:
    """An upstream sends a complete answer, then (a moment later) a stale second answer nobody asked
    for, and keeps the connection open. agproxy must not hand that stale answer to the next request
    that reuses the connection (HTTP response desynchronisation)."""

    def desync(ctx: Any) -> List[Any]:
        if ctx.attempt == 1:
            stale = response("200 OK", "application/json", json.dumps(message(ctx.model, "STALE SMUGGLED")).encode())
            return [Send(good(ctx)), Sleep(0.2), Send(stale), KeepAlive()]
        fresh = response("200 OK", "application/json", json.dumps(message(ctx.model, "FRESH ANSWER")).encode())
        return [Send(fresh), KeepAlive()]

    with MisbehavingUpstream({"desync": desync}) as fake:
        config = {"auth_mode": "off", "max_retry_attempts": 1, "force_stream_internally": False, "state_file": "",
                  "upstreams": [{"name": "u", "kind": "anthropic", "base_url": fake.url_for("desync", "anthropic",
                                                                                         "json"),
                                 "accounts": [{"name": "alice", "api_key": ALICE_KEY}], "timeout_s": 3}]}
        proxy = start_agproxy(config, command=program_under_test())
        first = ask(proxy.port, "anthropic", "json", "x")
        assert first.status == 200, first.describe()
        time.sleep(0.6)
        second = ask(proxy.port, "anthropic", "json", "x")
        assert b"STALE SMUGGLED" not in second.body, "the second request got the stale bytes of the first " \
                                                     "connection: " + second.describe()
        assert second.status in (200, 502), second.describe()


def test_the_good_answers_of_the_fake_pass_the_checks(start_agproxy: Any) -> None:
    """The control: a fake case that behaves well gives complete answers in every mode and kind."""
    recipes = {"fine": lambda ctx: [Send(good(ctx))]}
    with MisbehavingUpstream(recipes) as fake:
        runs = [(k, m, "fine") for k in KINDS for m in MODES]
        proxies = {}
        for name, force in (("forced", True), ("json", False)):
            upstreams, rules = [], []
            for kind, mode, case in runs:
                model = model_name(kind, mode, case)
                upstreams.append({"name": model, "kind": kind, "base_url": fake.url_for(case, kind, mode),
                                  "accounts": [{"name": "a", "api_key": ALICE_KEY}],
                                  **({"openai": {"tokenize": "vllm"}} if mode == "count" and kind == "openai"
                                     else {})})
                rules.append({"match": model, "upstream": model})
            proxies[name] = start_agproxy({"auth_mode": "off", "force_stream_internally": force, "state_file": "",
                                           "upstreams": upstreams, "model_map": rules}, command=program_under_test())
        for kind, mode, case in runs:
            proxy = proxies["json" if mode in ("json", "count") else "forced"]
            answer = ask(proxy.port, kind, mode, case, 10)
            problems = judge(kind, mode, case, answer, OK)
            assert not problems, f"{kind}/{mode}: {answer.describe()} {problems}"


# -- what the matrix cannot see: time, departures, reuse and memory -----------------------------------------

def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def single_upstream_config(fake: MisbehavingUpstream, cases: List[Tuple[str, str, str]], **top: Any) -> Dict[str, Any]:
    upstreams, rules = [], []
    for kind, mode, case in cases:
        name = model_name(kind, mode, case)
        upstreams.append({"name": name, "kind": kind, "base_url": fake.url_for(case, kind, mode),
                          "timeout_s": 30,
                          "accounts": [{"name": "alice", "api_key": ALICE_KEY}]})
        rules.append({"match": name, "upstream": name})
    return dict({"auth_mode": "off", "state_file": "", "max_retry_attempts": 1, "upstreams": upstreams,
                 "model_map": rules}, **top)


@pytest.mark.parametrize("kind", KINDS)
def test_a_large_event_is_relayed_in_linear_time(start_agproxy: Any, kind: str) -> None:
    """One big event (a whole tool input in one delta, say) costs time in proportion to its size:
    4x the bytes may take up to 8x the time, not 16x."""
    sizes = (3 * 1024 * 1024, 12 * 1024 * 1024)
    recipes = {f"big{size}": (lambda ctx, size=size: [Send(big_delta(ctx, size))]) for size in sizes}
    with MisbehavingUpstream(recipes) as fake:
        proxy = start_agproxy(single_upstream_config(fake, [(kind, "stream", c) for c in recipes]),
                              command=program_under_test())
        took = {size: 1e9 for size in sizes}
        for _ in range(3):  # rounds of both sizes, so a busy moment of a shared machine slows one round of each
            for size in sizes:
                started = time.monotonic()
                answer = ask(proxy.port, kind, "stream", f"big{size}", 60)
                took[size] = min(took[size], time.monotonic() - started)
                assert answer.status == 200 and b"message_stop" in answer.body[-200:], answer.describe()
    small, large = took[sizes[0]], took[sizes[1]]
    assert large < 8 * max(small, 0.02), f"{kind}: a 3 MB event took {small:.2f} s, a 12 MB one {large:.2f} s"


LEAVING = [("anthropic", "hang"), ("anthropic", "headers_then_hang"), ("anthropic", "sse_stall"),
           ("anthropic", "sse_trickle_comments"), ("anthropic", "slow_head_trickle"),
           ("anthropic", "status_100_forever"), ("openai", "hang"), ("openai", "oa_stall"),
           ("openai", "oa_trickle_comments"), ("openai", "slow_head_trickle")]


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_that_leaves_frees_the_upstream_connection(start_agproxy: Any, how: str) -> None:
    """A client hangs up (``close``: an ordinary close, a FIN, as an SDK or Claude Code does when its
    user interrupts; ``reset``: an abortive close, a RST) while the upstream stalls or trickles, before
    any byte of the answer: agproxy closes the upstream connection at once (upstream timeouts are
    30 s here, so only the departure can explain it), rather than let a generation nobody will read
    run on."""
    cases = [(kind, mode, case) for kind, case in LEAVING for mode in ("stream", "forced")]
    with MisbehavingUpstream() as fake:
        proxy = start_agproxy(single_upstream_config(fake, cases), command=program_under_test())

        def leave(run: Tuple[str, str, str]) -> Optional[float]:
            kind, mode, case = run
            body = json.dumps(request_body(kind, mode, case)).encode()
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
                sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
                time.sleep(1.0)
                if how == "reset":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            left = time.monotonic()
            while time.monotonic() < left + 4:
                hit = [at for c, k, m, at in fake.abandoned if (c, k, m) == (case, kind, mode)]
                if hit:
                    return max(0.0, hit[0] - left)
                time.sleep(0.05)
            return None

        with ThreadPoolExecutor(max_workers=len(cases)) as pool:
            noticed = dict(zip(cases, pool.map(leave, cases)))
    late = {f"{k}/{m}/{c}": v for (k, m, c), v in noticed.items() if v is None or v > 2.0}
    assert not late, "upstream connections agproxy kept open after the client left (None: still open after 4 s): " \
                     f"{late}"


def test_an_upstream_closing_idle_connections_is_invisible(start_agproxy: Any) -> None:
    """The upstream closes each keep-alive connection ~50 ms after answering (as servers with a short
    idle timeout do); requests that race that close must be retried on a fresh connection, unseen,
    even with one account and one attempt."""
    recipes = {"short_idle": lambda ctx: [Send(good(ctx)), Sleep(0.05)]}
    with MisbehavingUpstream(recipes) as fake:
        cases = [("anthropic", "json", "short_idle"), ("openai", "json", "short_idle")]
        proxy = start_agproxy(single_upstream_config(fake, cases, force_stream_internally=False),
                              command=program_under_test())
        failures = []
        for i in range(40):
            kind = KINDS[i % 2]
            answer = ask(proxy.port, kind, "json", "short_idle", 10)
            if answer.status != 200:
                failures.append(f"request {i} ({kind}): {answer.describe(200)}")
            time.sleep(0.02 + (i % 7) * 0.01)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_that_does_not_read_does_not_grow_agproxy(start_agproxy: Any, kind: str) -> None:
    """40 MB of events for a client that reads nothing for 3 s: agproxy applies back-pressure to the
    upstream instead of buffering the stream; then the client reads it all, complete."""
    def huge(ctx: Any) -> List[Any]:
        text = " ".join("x" * 100_000 for _ in range(400))
        return [Send(sse_response(events_of(ctx, text)))]

    with MisbehavingUpstream({"huge": huge}) as fake:
        proxy = start_agproxy(single_upstream_config(fake, [(kind, "stream", "huge")]), command=program_under_test(),
                              process=True)  # its memory is the test
        ask(proxy.port, kind, "stream", "huge", 1)  # warm up (the answer is dropped after 1 s)
        time.sleep(0.5)
        before = rss_kb(proxy.proc.pid)
        body = json.dumps(request_body(kind, "stream", "huge")).encode()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
            time.sleep(3.0)
            grown = rss_kb(proxy.proc.pid) - before
            answer = read_answer(sock, 60)
    end, problems = stream_problems(answer.body, strict_events=True)
    assert answer.status == 200 and end == "message_stop" and not problems, (answer.describe(200), problems)
    assert grown < 24 * 1024, f"agproxy grew by {grown // 1024} MB holding a stream its client did not read"


# -- echoed header credentials ------------------------------------------------------------------------
# The upstreams of these cases carry a credential in their ``headers`` beside the account keys, and
# echo the request's headers: in the answer's text (every credential cut across deltas), in headers a
# client is relayed, in a 401. No spelling of any credential may reach a byte the client receives
# (headers and body, and the text its deltas join into), agproxy's log, its state file or its
# accounts page.

ECHO_CASES = ("echo_header_credentials", "echo_header_credentials_401")
EXPECT.update({"echo_header_credentials": OK, "echo_header_credentials_401": KEY_REJECTED})
CASE_UPSTREAM_FIELDS: Dict[str, Dict[str, Any]] = {case: {"headers": ECHO_HEADERS} for case in ECHO_CASES}
ECHO_RUNS = [run for run in RUNS if run[2] in ECHO_CASES]


def spellings_of(secret: str) -> List[str]:
    """How the echoing fake writes a credential (besides as it is): JSON-escaped, URL-encoded,
    base64 alone and in a Basic ``gateway:`` pair."""
    return [secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe=""),
            base64.b64encode(secret.encode()).decode(), base64.b64encode(f"gateway:{secret}".encode()).decode()]


def strings_in(value: Any) -> List[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings_in(k) + strings_in(v)]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []


def what_the_client_reads(answer: Answer) -> str:
    """Every byte of the answer, and the text it means: each string of a JSON body, and for a stream
    each block's text as its deltas join (and every string of every event)."""
    seen = [bytes(answer.raw).decode("latin-1")]
    if answer.content_type == "text/event-stream":
        blocks: Dict[Any, str] = {}
        for chunk in re.split(rb"\r?\n\r?\n", answer.body):
            data = b"\n".join(line[5:].lstrip(b" ") for line in chunk.splitlines() if line.startswith(b"data:"))
            try:
                event = json.loads(data)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            seen += strings_in(event)
            delta = event.get("delta")
            if event.get("type") == "content_block_delta" and isinstance(delta, dict):
                piece = next((v for k, v in delta.items() if k != "type" and isinstance(v, str)), "")
                blocks[event.get("index")] = blocks.get(event.get("index"), "") + piece
        seen += list(blocks.values())
    else:
        try:
            seen += strings_in(json.loads(answer.body))
        except ValueError:
            pass
    return "\n".join(seen)


def spelled(text: str) -> List[str]:
    return [s for secret in ECHO_SECRETS for s in spellings_of(secret) if s in text]


@pytest.mark.parametrize("kind, mode, case", ECHO_RUNS, ids=[f"{k}-{m}-{c}" for k, m, c in ECHO_RUNS])
def test_echoed_header_credentials_reach_no_byte_the_client_reads(matrix: Matrix, kind: str, mode: str,
                                                                   case: str) -> None:
    answer = matrix.results[(kind, mode, case)].answer
    assert answer.status in (200, 424), answer.describe()  # 424: KEY_REJECTED_STATUS
    if case == "echo_header_credentials" and mode != "count":
        assert "Your request had" in what_the_client_reads(answer), answer.describe()  # the echo did arrive
    found = spelled(what_the_client_reads(answer))
    assert not found, f"{found} in {answer.describe(2000)}"


def test_echoed_header_credentials_stay_out_of_log_state_and_accounts_page(matrix: Matrix) -> None:
    problems = []
    for name, proxy in matrix.proxies.items():
        problems += [f"{name} log: {s}" for s in spelled(proxy.log())]
        page = get(proxy.port, "/v1/agproxy/accounts")
        assert page.status == 200, page.describe()
        problems += [f"{name} accounts page: {s}" for s in spelled(what_the_client_reads(page))]
        config = json.loads(Path(proxy.proc.args[proxy.proc.args.index("--config") + 1]).read_text())
        state = Path(config["state_file"])
        deadline = time.monotonic() + 5  # the rests of the 401 cases are saved off the event loop
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert state.exists(), f"{name}: no state file was written (the 401 cases rest their keys)"
        saved = state.read_text()
        assert "echo_header_credentials_401" in saved, saved[:2000]
        problems += [f"{name} state file: {s}" for s in spelled(saved)]
    assert not problems, "\n".join(problems)


# -- a client that leaves mid-stream is the client's doing, not the upstream's ------------------------

def _first_events_then_trickle(every_s: float) -> Any:
    """The head and first events of a proper stream of this kind, then one of its text events again
    and again, ``every_s`` apart (a long answer being written)."""
    def make(ctx: Any) -> List[Any]:
        events = events_of(ctx, "a long answer being written")
        return [Send(sse_response(events[:3])[:-5]),  # without the last chunk: the stream goes on
                Trickle(b"%x\r\n%b\r\n" % (len(events[3]), events[3]), every_s=every_s, for_s=20)]
    return make


@pytest.mark.parametrize("every_s", [0.05, 1.0], ids=["fast", "slow"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_client_leaving_mid_stream_is_logged_as_the_client_leaving(start_agproxy: Any, kind: str,
                                                                      every_s: float) -> None:
    """Claude Code's Esc closes the connection mid-stream: agproxy's log says the client left (its
    access line, INFO: 499), not that the upstream's stream broke (WARNING), whether
    agproxy notices it writing an event (``fast``) or watching the socket while it waits (``slow``)."""
    with MisbehavingUpstream({"stall": _first_events_then_trickle(every_s)}) as fake:
        proxy = start_agproxy(single_upstream_config(fake, [(kind, "stream", "stall")]))
        body = json.dumps(request_body(kind, "stream", "stall")).encode()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 5
        while "agproxy.access" not in proxy.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        log = proxy.log()
    access = [line for line in log.splitlines() if "agproxy.access" in line]
    assert any(" 499 " in line and "client closed the connection" in line for line in access), log
    assert "broke after it began" not in log and " WARNING " not in log, log
