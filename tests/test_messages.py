"""Messages: what agproxy says to a client and in its log, and how Claude Code shows it.

Claude Code does not always show an error's message: it matches the message and the status against
patterns and may put its own words in their place. Read in the bundled code of both pinned versions
(2.1.197 and 2.1.332; each ships a native binary whose embedded JavaScript holds the same classifier,
``getAssistantMessageFromError``), with what agproxy writes checked against each:

- "x-api-key" anywhere in the message, any status: "Not logged in · Please run /login". agproxy
  quoted it from upstreams ("invalid x-api-key") and wrote it in its own 401 ("send ... as x-api-key").
  Now every Anthropic-shaped error passes ``client_words`` (in ``error_body``), which says "x api key".
- 401 and 403: "Please run /login · API Error: <message>" (interactive) or "Failed to authenticate.
  API Error: <message>" (-p). Right for agproxy's own 401 (the client's key to agproxy); its 403s (a
  model outside a client's ``models``, a foreign Origin or Host, a client key on an admin route) get
  the /login prefix too, with agproxy's message after it. A rejected upstream key is neither.
- 404: "There's an issue with the selected model (M). It may not exist or you may not have access
  to it." Right for the routing 404; wrong for /v1/v1 (now a 400, see below).
- 5xx: "API Error: <message>. This is a server-side issue, usually temporary — try again in a
  moment. If it persists, check your inference gateway (host)." Right for unreachable and failing
  upstreams, wrong for a rejected upstream key: that is now ``KEY_REJECTED_STATUS`` (424), shown as
  "API Error: 424 <message>".
- 529, or '"type":"overloaded_error"' in the message: retried as overloaded ("Repeated 529
  Overloaded errors" after ten); agproxy's 529 (every slot busy) means that.
- 429: "API Error: Request rejected (429) · <message>". agproxy's 429s say which limit and when.
- 413: "Request too large (max 32MB)" unless the message says "context window" (then prompt too
  long). agproxy's 413 is the body limit (32 MiB by default): the same meaning.
- "prompt is too long" (and, in 2.1.332, "maximum context length", "context_length_exceeded",
  "exceeds the context window" and more, on 400/413/422): treated as a context overflow, and
  compacted. agproxy says "prompt is too long: N tokens > M maximum" exactly when that is so.
- "credit balance is too low": "Credit balance is too low" (billing); "organization has been
  disabled" (400, own ANTHROPIC_API_KEY only); "OAuth token has been revoked" (403); "OAuth
  authentication is currently not allowed" (401/403); "invalid model name" (400, subscribers only);
  "`tool_use` ids were found without `tool_result` blocks", "`tool_use` ids must be unique",
  "unexpected `tool_use_id`" (400, "Run /rewind"); "image exceeds"/"image dimensions exceed",
  PDF phrases, "Request too large"/"the request size (N bytes) exceeds": none is in agproxy's own
  words; when an upstream says one, Claude Code's reading of it is the upstream's meaning.
- Any other 4xx: "API Error: <status> <message>", agproxy's words as they are.
"""

from __future__ import annotations

import json
import time

from tests.conftest import fake_config
from tests.fakes.anthropic_upstream import Json, Sse
from tests.wire_check import post_json

SIMPLE = {"model": "claude-x", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


def test_agproxy_s_own_401_does_not_say_x_api_key(start_agproxy, fake):
    proxy = start_agproxy(fake_config(fake, auth_mode="strict", api_key="sk-local-key-123"))
    answer = post_json(proxy.port, "/v1/messages", SIMPLE, 10)
    assert answer.status == 401
    message = json.loads(answer.body)["error"]["message"]
    assert "x-api-key" not in message.lower() and "x api key or Authorization: Bearer" in message


def test_an_upstream_error_event_saying_x_api_key_reaches_the_client_reworded(start_agproxy, fake):
    fake.script(Sse([("message_start", {"type": "message_start", "message": {
                        "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
                        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}}),
                     ("content_block_start", {"type": "content_block_start", "index": 0,
                                              "content_block": {"type": "text", "text": ""}}),
                     ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta", "text": "Hel"}}),
                     ("error", {"type": "error", "error": {"type": "authentication_error",
                                                           "message": "Invalid X-Api-Key for this workspace"}})],
                    delay_s=0.2))
    proxy = start_agproxy(fake_config(fake))
    answer = post_json(proxy.port, "/v1/messages", dict(SIMPLE, stream=True), 10)
    assert answer.status == 200
    text = answer.body.decode()
    assert "event: error" in text and "x-api-key" not in text.lower() and "Invalid x api key" in text


def test_an_upstream_400_quoting_x_api_key_is_reworded(start_agproxy, fake):
    fake.script(Json(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                      "message": "header x-api-key: must not be empty"}}))
    proxy = start_agproxy(fake_config(fake))
    answer = post_json(proxy.port, "/v1/messages", SIMPLE, 10)
    assert answer.status == 400
    assert json.loads(answer.body)["error"]["message"] == "header x api key: must not be empty"


def test_a_gemini_key_rejection_is_logged_with_the_status_gemini_sent(start_agproxy):
    """Gemini refuses a bad key with a 400 (which agproxy reads as a rejected key, as a 401 would
    be): the log says 400, and the 424 says the key will be tried again."""
    from tests.fakes.gemini_upstream import FakeGemini

    with FakeGemini(keys=("the-right-key",)) as gemini:
        proxy = start_agproxy({"upstreams": [{"name": "gemini", "kind": "gemini", "base_url": gemini.url,
                                              "accounts": [{"name": "key-1", "api_key": "a-wrong-key"}]}],
                               "model_map": [{"match": "*", "upstream": "gemini", "model": "gemini-2.5-flash"}]})
        first = post_json(proxy.port, "/v1/messages", SIMPLE, 10)
        again = post_json(proxy.port, "/v1/messages", SIMPLE, 10)
    assert (first.status, again.status) == (424, 424)
    assert "gemini/key-1 status 400: key rejected (HTTP 400: API key not valid" in proxy.log()
    assert "status 401" not in proxy.log()
    assert "will be tried again in 600 s" in json.loads(again.body)["error"]["message"]


def test_a_400_that_is_not_retried_is_logged_with_the_upstream_s_words_and_the_profile_hint(start_agproxy):
    """A strict compatible service behind the default profile: the log said only "HTTP 400 is not
    retried; giving up", and only the client saw the hint."""
    from tests.fakes.anthropic_upstream import FakeAnthropic

    with FakeAnthropic(strict=True) as strict:
        proxy = start_agproxy(fake_config(strict))
        body = dict(SIMPLE, tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}])
        answer = post_json(proxy.port, "/v1/messages", body, 10)
    assert answer.status == 400
    line = next(line for line in proxy.log().splitlines() if "is not retried" in line)
    assert "HTTP 400 is not retried: tools.0: Input tag 'web_search_20250305' found" in line, line
    assert "set \"profile\": \"compatible\" on upstream 'fake'" in line and line.endswith("giving up")


# -- from the second new-user trial: what the log and the early answers say ------------------------

def _access_lines(proxy, count: int) -> list:
    """The access lines, once there are ``count`` (each is written just after its answer)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in proxy.log().splitlines() if "agproxy.access" in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def test_answers_refused_before_the_request_is_routed_carry_a_request_id_that_the_log_names(start_agproxy, fake):
    """docs/api.md: request-id is on every response. The 401 for a wrong key to agproxy and the
    400 for a base URL ending in /v1 had none, and their access lines said '-'."""
    proxy = start_agproxy(fake_config(fake, auth_mode="strict", api_key="sk-local-key-123"))
    refused = post_json(proxy.port, "/v1/messages", SIMPLE, 10)
    doubled = post_json(proxy.port, "/v1/v1/messages", SIMPLE, 10, [("x-api-key", "sk-local-key-123")])
    for answer, status in ((refused, 401), (doubled, 400)):
        assert answer.status == status, answer.describe()
        request_id = answer.header("request-id") or ""
        assert request_id.startswith("req_"), answer.describe()
        assert any(line.split(" agproxy.access: ")[-1].startswith(request_id) for line in _access_lines(proxy, 2)), \
            proxy.log()


def test_the_access_line_of_a_model_no_rule_routes_says_why(start_agproxy, fake):
    """Claude Code shows any 404 as "There's an issue with the selected model"; the log said only
    '404 - - 1ms', so nothing anywhere told the user that model_map lacks a rule."""
    proxy = start_agproxy(fake_config(fake, model_map=[{"match": "claude-*sonnet*", "upstream": "fake"}]))
    answer = post_json(proxy.port, "/v1/messages", dict(SIMPLE, model="claude-opus-5-5"), 10)
    assert answer.status == 404
    access = [line for line in _access_lines(proxy, 1) if " 404 " in line]
    assert access and "no model_map rule matches 'claude-opus-5-5'" in access[-1], proxy.log()


def test_an_upstream_404_names_the_upstream_and_is_logged_as_a_warning(start_agproxy, fake):
    """An anthropic-kind upstream with no Messages route (an OpenAI-only server) answered its own
    words, 'no route /v1/messages', which read as agproxy's; and the log said so at INFO only."""
    fake.script(Json(404, {"type": "error", "error": {"type": "not_found_error", "message": "no route /v1/messages"}}))
    proxy = start_agproxy(fake_config(fake))
    answer = post_json(proxy.port, "/v1/messages", SIMPLE, 10)
    assert answer.status == 404
    assert json.loads(answer.body)["error"]["message"] == "upstream 'fake' answered HTTP 404: no route /v1/messages"
    assert any(" WARNING " in line and "status 404" in line for line in proxy.log().splitlines()), proxy.log()
