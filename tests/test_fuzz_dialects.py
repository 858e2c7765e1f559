"""Property tests (hypothesis) of the other agents' routes over real sockets (issue 21): any JSON,
hostile JSON text, one field of a valid request replaced by anything, and any bytes, sent to
``/v1/chat/completions``, ``/v1/responses`` and Gemini's ``generateContent``,
``streamGenerateContent`` (with and without ``alt=sse``), ``countTokens`` and model routes, on a
real agproxy process before the demo and well-behaved ``anthropic``, ``openai`` and ``gemini``
upstreams (``tests/fakes/misbehaving.py``'s ``good`` answers).

Every answer is a well-formed HTTP/1.1 response, never a dropped connection, never a 5xx (the
upstreams behave), with no upstream key in it: an error in that route's shape (OpenAI's for Chat and
Responses, Gemini's for Gemini's routes) or a 200 its client reads to its end
(``tests/test_fault_dialects.py``'s readers). Afterwards agproxy is alive, and its log holds no key
and no internal error.
"""

from __future__ import annotations

import json
import socket
import urllib.parse
from typing import Any, Dict, Iterator, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Agproxy, clean_env, write_config
from tests.fakes.misbehaving import KEYS, MisbehavingUpstream, Send, good, live_config
from tests.test_fault_dialects import WAY, error_problems, read
from tests.test_fuzz import JSON, OBJECT, TWEAKS, hostile_text, shaped, words
from tests.wire_check import (
    Answer,
    ResponseReader,
    build_request,
    exchange,
    get,
    leaked,
    post_json,
    program_under_test,
    strict_json,
)

NETWORK = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.data_too_large])
MODELS = ["anth-x", "compat-x", "oa-x", "gem-x", "demo-x"]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agproxy]:
    tmp = tmp_path_factory.mktemp("fuzz-dialects")
    with MisbehavingUpstream({"fine": lambda ctx: [Send(good(ctx))]}) as fake:
        config = live_config(fake, "dialects", 5)
        config["upstreams"].append({"name": "gem", "kind": "gemini", "base_url": fake.url_for("fine", "gemini",
                                                                                              "dialects"),
                                    "accounts": config["upstreams"][1]["accounts"], "timeout_s": 5})
        config["model_map"].insert(0, {"match": "gem-*", "upstream": "gem"})
        running = Agproxy(["--config", str(write_config(tmp, config)), "--port", "0"], clean_env(HOME=str(tmp)), tmp,
                          program_under_test())
        try:
            yield running
        finally:
            running.stop()


# -- the routes and how their answers are read ------------------------------------------------------------

GEMINI_METHODS = {"generateContent": "gem_whole", "streamGenerateContent?alt=sse": "gem_sse",
                  "streamGenerateContent": "gem_array", "countTokens": "gem_count"}


def gemini_path(model: str, method: str, root: str = "/v1beta") -> str:
    return f"{root}/models/{urllib.parse.quote(model, safe='')}:{method}"


def way_of(path: str, answer: Answer) -> str:
    """The way of asking whose reader reads this answer (for Chat and Responses: by its content type)."""
    streamed = answer.content_type == "text/event-stream"
    if path.startswith("/v1/chat/"):
        return "chat" if streamed else "chat_whole"
    if path.startswith("/v1/responses"):
        return "resp" if streamed else "resp_whole"
    return GEMINI_METHODS[path.split(":", 1)[1]]


def judge(path: str, answer: Answer) -> List[str]:
    """What is wrong with the answer to a request on one of the dialects' routes."""
    problems = list(answer.problems)
    if answer.dropped or answer.status == 0:
        return problems or ["no answer"]
    if answer.timed_out:
        return problems + ["no complete answer in time"]
    problems += [f"the upstream key {secret[:14]}... appears in the answer" for secret in leaked(answer.raw, KEYS)]
    if answer.status >= 500:
        problems.append(f"status {answer.status}")
    dialect = "gemini" if "/models/" in path else "chat"
    if answer.status != 200:
        if answer.content_type != "application/json":
            problems.append(f"an error with content-type {answer.content_type!r}")
        try:
            problems += error_problems(dialect, strict_json(answer.body), answer.status)
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(f"the error body is not strict JSON ({exc}): {answer.body[:200]!r}")
        return problems
    reading = read(WAY[way_of(path, answer)], answer)
    problems += reading.problems
    if reading.end != "done":
        problems.append(f"a 200 that ended with {reading.end}")
    return problems


def check(proxy: Agproxy, path: str, raw: bytes, note: str = "") -> None:
    answer = post_json(proxy.port, path, raw, 20, [("Authorization", "Bearer client-key")])
    problems = judge(path, answer)
    assert not problems, f"{path} {raw[:300]!r} {note} -> {answer.describe(400)}: {problems}"


# -- strategies: requests of each dialect, well-typed or not ----------------------------------------------

TEXT = st.text(max_size=12) | st.sampled_from(["", "hi", "\ud800", "\x00", "{", "```json\n{}\n```"])
SCHEMA = shaped({"type": words("object", "OBJECT", "string", "STRING", "array", "integer"),
                 "properties": st.dictionaries(st.text(max_size=5), OBJECT, max_size=3), "required": JSON,
                 "items": OBJECT, "enum": JSON, "$ref": TEXT, "anyOf": st.lists(OBJECT, max_size=2)})
CHAT_PART = shaped({"type": words("text", "image_url", "input_audio", "file", "refusal"), "text": TEXT,
                    "image_url": shaped({"url": TEXT | words("data:image/png;base64,AAAA", "https://x/y.png"),
                                         "detail": TEXT})})
CHAT_CALL = shaped({"id": TEXT, "type": words("function", "custom"),
                    "function": shaped({"name": TEXT, "arguments": TEXT | words("{}", '{"a": 1}', "[1]")})})
CHAT_MESSAGE = shaped({"role": words("system", "developer", "user", "assistant", "tool", "function"),
                       "content": TEXT | st.lists(CHAT_PART, max_size=3), "name": TEXT,
                       "tool_calls": st.lists(CHAT_CALL, max_size=2), "tool_call_id": TEXT,
                       "reasoning_content": TEXT})
CHAT_TOOL = shaped({"type": words("function", "custom"), "function": shaped({"name": TEXT, "description": TEXT,
                                                                               "parameters": SCHEMA, "strict": JSON})})
CHAT = shaped({"model": st.sampled_from(MODELS), "messages": st.lists(CHAT_MESSAGE, max_size=4),
               "stream": st.booleans(), "stream_options": shaped({"include_usage": st.booleans()}),
               "max_tokens": st.integers(-2, 70000), "max_completion_tokens": st.integers(-2, 70000),
               "tools": st.lists(CHAT_TOOL, max_size=2),
               "tool_choice": words("auto", "none", "required") | shaped({"type": words("function"),
                                                                         "function": shaped({"name": TEXT})}),
               "parallel_tool_calls": st.booleans(), "reasoning_effort": words("low", "medium", "high", "minimal"),
               "response_format": shaped({"type": words("json_object", "json_schema", "text"),
                                          "json_schema": shaped({"name": TEXT, "schema": SCHEMA, "strict": JSON})}),
               "stop": TEXT | st.lists(TEXT, max_size=5), "temperature": JSON, "top_p": JSON,
               "n": st.integers(-1, 3)})
RESPONSES_ITEM = shaped({"type": words("message", "function_call", "function_call_output", "reasoning",
                                       "custom_tool_call", "custom_tool_call_output", "web_search_call"),
                         "role": words("user", "assistant", "system", "developer"),
                         "content": TEXT | st.lists(shaped({"type": words("input_text", "output_text",
                                                                          "input_image", "summary_text"),
                                                            "text": TEXT, "image_url": TEXT}), max_size=2),
                         "call_id": TEXT, "name": TEXT, "arguments": TEXT, "output": TEXT | JSON, "id": TEXT,
                         "encrypted_content": TEXT, "summary": st.lists(OBJECT, max_size=2), "namespace": TEXT,
                         "input": TEXT})
RESPONSES_TOOL = shaped({"type": words("function", "namespace", "custom", "web_search", "local_shell"),
                         "name": TEXT, "description": TEXT, "parameters": SCHEMA, "strict": JSON,
                         "tools": st.lists(shaped({"type": words("function"), "name": TEXT, "parameters": SCHEMA}),
                                           max_size=2),
                         "format": shaped({"type": words("grammar", "text"), "syntax": words("lark"),
                                           "definition": TEXT})})
RESPONSES = shaped({"model": st.sampled_from(MODELS), "input": TEXT | st.lists(RESPONSES_ITEM, max_size=4),
                    "instructions": TEXT, "stream": st.booleans(), "store": JSON,
                    "previous_response_id": TEXT, "tools": st.lists(RESPONSES_TOOL, max_size=2),
                    "tool_choice": words("auto", "none", "required") | OBJECT,
                    "include": st.lists(words("reasoning.encrypted_content"), max_size=2),
                    "reasoning": shaped({"effort": words("low", "high", "xhigh"), "summary": words("auto")}),
                    "max_output_tokens": st.integers(-2, 70000), "parallel_tool_calls": st.booleans(),
                    "text": shaped({"format": shaped({"type": words("json_schema", "text", "json_object"),
                                                      "name": TEXT, "schema": SCHEMA})}),
                    "prompt_cache_key": TEXT, "client_metadata": OBJECT})
GEMINI_PART = shaped({"text": TEXT, "thought": st.booleans(), "thoughtSignature": TEXT,
                      "functionCall": shaped({"name": TEXT, "args": JSON, "id": TEXT}),
                      "functionResponse": shaped({"name": TEXT, "response": JSON, "id": TEXT}),
                      "inlineData": shaped({"mimeType": words("image/png", "application/pdf", "text/plain"),
                                            "data": TEXT | words("AAAA")}),
                      "fileData": shaped({"mimeType": TEXT, "fileUri": TEXT})})
GEMINI_CONTENT = shaped({"role": words("user", "model", "function", "system"),
                         "parts": st.lists(GEMINI_PART, max_size=3)})
GEMINI_DECLARATION = shaped({"name": TEXT, "description": TEXT, "parameters": SCHEMA, "parametersJsonSchema": SCHEMA})
GEMINI = shaped({"contents": st.lists(GEMINI_CONTENT, max_size=4), "systemInstruction": GEMINI_CONTENT | TEXT,
                 "tools": st.lists(shaped({"functionDeclarations": st.lists(GEMINI_DECLARATION, max_size=2),
                                           "googleSearch": OBJECT}), max_size=2),
                 "toolConfig": shaped({"functionCallingConfig": shaped({"mode": words("AUTO", "ANY", "NONE"),
                                                                        "allowedFunctionNames": JSON})}),
                 "generationConfig": shaped({"maxOutputTokens": st.integers(-2, 70000), "temperature": JSON,
                                             "responseMimeType": words("application/json", "text/plain"),
                                             "responseSchema": SCHEMA, "responseJsonSchema": SCHEMA,
                                             "thinkingConfig": shaped({"thinkingBudget": st.integers(-2, 40000),
                                                                       "includeThoughts": st.booleans()}),
                                             "stopSequences": JSON, "candidateCount": st.integers(-1, 3)})})

GEMINI_ROUTE = st.builds(gemini_path, st.sampled_from(MODELS) | st.text(max_size=10),
                         st.sampled_from(sorted(GEMINI_METHODS)), st.sampled_from(["/v1beta", "/v1"]))
ROUTED = (st.tuples(st.just("/v1/chat/completions"), CHAT | JSON)
          | st.tuples(st.just("/v1/responses"), RESPONSES | JSON)
          | st.tuples(GEMINI_ROUTE, GEMINI | JSON))


@NETWORK
@given(ROUTED, st.sampled_from(TWEAKS))
def test_any_json_shape_to_each_route(proxy: Agproxy, routed: Any, tweak: str) -> None:
    path, body = routed
    check(proxy, path, hostile_text(body, tweak), tweak)


VALID = {
    "/v1/chat/completions": {"model": "oa-x", "stream": True, "max_tokens": 16,
                             "messages": [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                             "tools": [{"type": "function", "function": {"name": "Read",
                                                                         "parameters": {"type": "object"}}}]},
    "/v1/responses": {"model": "anth-x", "stream": True, "store": False, "instructions": "be brief",
                      "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
                      "tools": [{"type": "function", "name": "exec_command", "parameters": {"type": "object"}}]},
    gemini_path("gem-x", "streamGenerateContent?alt=sse"): {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "tools": [{"functionDeclarations": [{"name": "run", "parametersJsonSchema": {"type": "object"}}]}],
        "generationConfig": {"maxOutputTokens": 16}},
}


def paths_in(value: Any, prefix: str = "") -> List[str]:
    """Every place in a JSON value (``a.0.b``), the value's own place first."""
    places = [prefix] if prefix else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        places += paths_in(inner, f"{prefix}.{key}" if prefix else str(key))
    return places


def replaced(body: Dict[str, Any], where: str, value: Any) -> Dict[str, Any]:
    copy = json.loads(json.dumps(body))
    parts = where.split(".")
    target = copy
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(parts[-1])] = value
    else:
        target[parts[-1]] = value
    return copy


PLACES = [(path, where) for path, body in VALID.items() for where in paths_in(body)]


@NETWORK
@given(st.sampled_from(PLACES), JSON, st.sampled_from(MODELS), st.booleans())
def test_one_field_wrong_in_a_valid_request(proxy: Agproxy, place: Any, value: Any, model: str, stream: bool) -> None:
    """A valid request of each dialect, sent to each kind of upstream, streamed or not, with exactly
    one field (at any depth) replaced by an arbitrary value."""
    path, where = place
    body = replaced(VALID[path], where, value)
    if "/models/" in path:
        path = gemini_path(model, "streamGenerateContent?alt=sse" if stream else "generateContent")
    elif isinstance(body, dict):
        body["model"], body["stream"] = model, stream
    check(proxy, path, hostile_text(body, "none"), where)


ROUTES = ["/v1/chat/completions", "/v1/responses", gemini_path("gem-x", "generateContent"),
          gemini_path("anth-x", "streamGenerateContent?alt=sse"), gemini_path("oa-x", "streamGenerateContent"),
          gemini_path("demo-x", "countTokens"), gemini_path("anth-x", "countTokens", "/v1")]


@NETWORK
@given(st.sampled_from(ROUTES), st.binary(max_size=300) | st.sampled_from([b"", b"null", b"[]", b"{}", b"\xff{",
                                                                          b'{"a":' * 2000]))
def test_any_bytes_as_the_body(proxy: Agproxy, path: str, body: bytes) -> None:
    check(proxy, path, body)


@NETWORK
@given(st.sampled_from(ROUTES + ["/v1beta/models", "/v1beta/models/anth-x", "/v1beta/models/x:nope",
                                 "/v1beta/nothing", "/v1/responses/resp_1"]),
       st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "POST"]),
       st.sampled_from(["application/json", "text/plain", "", "application/json; charset=latin-1"]))
def test_any_method_and_content_type(proxy: Agproxy, path: str, method: str, content_type: str) -> None:
    """Each route with each method and content type: its answer or an error in its dialect's shape."""
    headers = [("Content-Type", content_type)] if content_type else []
    body = json.dumps(VALID["/v1/chat/completions"]).encode() if method != "GET" else None
    answer = exchange(proxy.port, build_request(method, path, body, headers), 20, method)
    problems = list(answer.problems) + ([f"status {answer.status}"] if answer.status >= 500 else [])
    if answer.status >= 400 and not answer.dropped:
        try:
            shape = "gemini" if path.startswith("/v1beta") or ":" in path else "chat"
            problems += error_problems(shape, strict_json(answer.body), answer.status)
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(f"the error body is not strict JSON ({exc})")
    assert not answer.dropped and not problems, f"{method} {path} ({content_type}) -> {answer.describe(300)}: " \
                                                f"{problems}"


def test_a_path_under_a_dialects_route_is_refused_in_its_shape(proxy: Agproxy) -> None:
    """The openai SDK's ``responses.retrieve`` (``GET /v1/responses/{id}``) and the like are not
    served: their 404 comes in the shape of the route they are under, as every other error there
    (under /v1/responses as a 400, the only 4xx Codex CLI does not retry)."""
    for method, path, shape, status in (("GET", "/v1/responses/resp_1", "chat", 400),
                                        ("POST", "/v1/responses/resp_1/cancel", "chat", 400),
                                        ("GET", "/v1/chat/completions/chatcmpl-1", "chat", 404),
                                        ("GET", "/v1beta", "gemini", 404)):
        answer = exchange(proxy.port, build_request(method, path, b"{}" if method == "POST" else None,
                                                    [("Content-Type", "application/json")]), 10, method)
        assert answer.status == status and not answer.problems, answer.describe()
        problems = error_problems(shape, strict_json(answer.body), answer.status)
        assert not problems, f"{method} {path}: {answer.describe()}: {problems}"


def test_a_request_refused_for_its_framing_or_size_is_refused_in_its_routes_shape(proxy: Agproxy) -> None:
    """A body over ``max_body_bytes`` (Codex resends the whole history each turn), an invalid
    Content-Length, a transfer coding agproxy lacks: refused on the head, before any handler, yet in
    the shape of the route the head names (and a head naming no route, after a request to one on the
    same connection, not in that route's shape)."""
    paths = {"/v1/chat/completions": "chat", "/v1/responses": "chat", gemini_path("gem-x", "generateContent"): "gemini"}
    for path, shape in paths.items():
        for framing in ("Content-Length: 999999999999", "Content-Length: 1x", "Transfer-Encoding: gzip"):
            data = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
            answer = exchange(proxy.port, data.encode(), 10)
            assert answer.status in (400, 413, 501) and not answer.problems, answer.describe()
            problems = error_problems(shape, strict_json(answer.body), answer.status)
            assert not problems, f"{path} ({framing}): {answer.describe()}: {problems}"
    first = build_request("POST", "/v1/responses", b"{}", [("Content-Type", "application/json")])
    then = b"NOT A REQUEST LINE\r\n\r\n"  # no path: the shell's own (Anthropic's) shape, not the one before
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(first + then)
        reader = ResponseReader(sock)
        assert reader.read(10).status == 400
        answer = reader.read(10)
    assert answer.status == 400 and json.loads(answer.body).get("type") == "error", answer.describe()


def test_agproxy_is_still_healthy(proxy: Agproxy) -> None:
    """Runs after the tests above: the process lives, its model list answers, its log holds no key and
    no internal error."""
    assert proxy.proc.poll() is None, proxy.log()[-3000:]
    for path in ("/healthz", "/v1beta/models"):
        answer = get(proxy.port, path)
        assert answer.status == 200 and not answer.problems, answer.describe()
    log = proxy.log()
    assert not leaked(log, KEYS)
    internal = [line for line in log.splitlines() if "internal error" in line or line.startswith("Traceback")]
    assert not internal, "\n".join(internal[:20]) + "\n" + log[-4000:]
