"""A scriptable, strict fake Gemini API (``v1beta``) on a real socket.

It refuses what the Gemini API refuses, with Google's error shape and words:
- a key it does not know (400 ``API_KEY_INVALID``, as Google answers it), a model it does not have (404);
- a field it does not know, anywhere (``Unknown name "x" at '...'``), including any schema key outside
  the OpenAPI subset function ``parameters`` take, type arrays, empty-string enum values, an
  object with empty ``properties``, an array without ``items``, a schema with neither ``type`` nor
  ``anyOf``, and ``parameters`` that are not an object;
- an empty ``parts`` list, a part without its one data field, a role other than user and model;
- a model turn with N function calls not answered by exactly N function responses (names and ids
  matching) in the next turn;
- a model turn of the current turn (everything after the user last wrote; images returned beside
  function responses are not the user writing) whose first function call lacks its thought
  signature, and any signature that is not the one it gave that very part (or Google's
  documented stand-in);
- ``thinkingBudget`` with ``thinkingLevel``, ``thinkingLevel`` for a 2.x model, more than five stop
  sequences, more output tokens than 65,536.

It answers like Gemini 3: a signature on the first function call of an answer (none on the
others), on the last part of an answer without calls (its own empty part when streamed), thought
parts when ``includeThoughts`` is on, ``usageMetadata`` growing in every chunk, ``finishReason`` on
the last, no ``[DONE]``, events separated by CRLF CRLF. Replies are scripted with ``script()``:
``Answer`` (parts), ``Error`` (a status and Google's error body), ``Raw`` (bytes as they are);
with nothing queued it answers a canned text.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import re
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tests.fakes.server_thread import SeenRequest, ServerThread, json_reply, read_request

TEXT = "Hello from the fake Gemini server."
SKIP_SIGNATURE = "skip_thought_signature_validator"
MODELS = ("gemini-3-pro-preview", "gemini-3-flash-preview", "gemini-2.5-flash", "gemini-2.5-pro")
TOP_KEYS = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "safetySettings",
            "cachedContent", "labels"}
PART_DATA = ("text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
             "codeExecutionResult")
PART_KEYS = set(PART_DATA) | {"thought", "thoughtSignature", "videoMetadata", "partMetadata"}
SCHEMA_KEYS = {"type", "format", "title", "description", "nullable", "enum", "items", "minItems", "maxItems",
               "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern",
               "minimum", "maximum", "default", "example", "anyOf", "propertyOrdering"}
TYPES = {"string", "number", "integer", "boolean", "array", "object"}
GENERATION_KEYS = {"maxOutputTokens", "temperature", "topP", "topK", "stopSequences", "candidateCount",
                   "thinkingConfig", "responseMimeType", "responseSchema", "responseJsonSchema", "seed",
                   "presencePenalty", "frequencyPenalty", "responseModalities"}
DECLARATION_KEYS = {"name", "description", "parameters", "parametersJsonSchema", "response", "behavior"}


@dataclasses.dataclass
class Answer:
    """What the model says: ``parts`` as Gemini parts (text, thought text, functionCall); the fake
    adds the signatures. ``finish`` is the finishReason; ``delay_s`` pauses before each chunk;
    ``drop_after`` closes the connection after that many chunks."""

    parts: Sequence[Dict[str, Any]] = ()
    finish: str = "STOP"
    delay_s: float = 0.0
    drop_after: Optional[int] = None
    block_reason: Optional[str] = None


@dataclasses.dataclass
class Error:
    status: int = 429
    body: Any = None
    headers: Sequence[Tuple[str, str]] = ()


@dataclasses.dataclass
class Raw:
    data: bytes = b""


def google_error(status: int, message: str, state: str, details: Sequence[Dict[str, Any]] = ()) -> Dict[str, Any]:
    return {"error": {"code": status, "message": message, "status": state, "details": list(details)}}


def quota_error(retry_s: float = 26.0) -> Error:
    return Error(429, google_error(429, "You exceeded your current quota, please check your plan and billing details.",
                                   "RESOURCE_EXHAUSTED", [
                                       {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                                        "violations": [{"quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]},
                                       {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                        "retryDelay": f"{retry_s:g}s"}]))


def key_error() -> Dict[str, Any]:
    return google_error(400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT", [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
         "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}])


def call(name: str, args: Dict[str, Any], call_id: Optional[str] = None) -> Dict[str, Any]:
    return {"functionCall": dict({"name": name, "args": args}, **({"id": call_id} if call_id else {}))}


@dataclasses.dataclass
class GeminiRequest(SeenRequest):
    method: str
    target: str
    headers: List[Tuple[str, str]]
    body: bytes


class Refusal(Exception):
    def __init__(self, message: str, status: int = 400, state: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.status, self.state = status, state


def _unknown(name: str, at: str) -> Refusal:
    where = f" at '{at}'" if at else ""
    return Refusal(f'Invalid JSON payload received. Unknown name "{name}"{where}: Cannot find field.')


def _snake(path: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), path)


def user_wrote(parts: List[Dict[str, Any]]) -> bool:
    """Whether a user turn is the user writing (which begins a new current turn): a part that is
    not a function response, nor an image or file returned beside function responses (a tool
    result's image is still the tool loop's)."""
    answering = any("functionResponse" in p for p in parts)
    return any("functionResponse" not in p and not (answering and ("inlineData" in p or "fileData" in p))
               for p in parts)


def check_schema(schema: Any, at: str) -> None:
    if not isinstance(schema, dict):
        raise Refusal(f"Invalid value at '{at}': a schema must be an object")
    for key in schema:
        if key not in SCHEMA_KEYS:
            raise _unknown(key, _snake(at))
    kind = schema.get("type")
    if kind is not None and (not isinstance(kind, str) or kind.lower() not in TYPES):
        raise Refusal(f"Invalid value at '{_snake(at)}.type' ({json.dumps(kind)})")
    if kind is None and not schema.get("anyOf"):
        raise Refusal(f"* GenerateContentRequest.{_snake(at)}.type: must be specified when not using one_of, any_of "
                      "or all_of fields")
    if "enum" in schema:
        if not all(isinstance(v, str) and v for v in schema["enum"]):
            raise Refusal(f"* GenerateContentRequest.{_snake(at)}.enum: cannot be empty or non-string")
    if isinstance(kind, str) and kind.lower() == "object" and "properties" in schema and not schema["properties"]:
        raise Refusal(f"* GenerateContentRequest.{_snake(at)}.properties: should be non-empty for OBJECT type")
    for name, value in (schema.get("properties") or {}).items():
        check_schema(value, f"{at}.properties[{name}].value")
    for name in schema.get("required") or []:
        if name not in (schema.get("properties") or {}):
            raise Refusal(f"* GenerateContentRequest.{_snake(at)}.required[{name}]: property is not defined")
    if isinstance(kind, str) and kind.lower() == "array" and "items" not in schema:
        raise Refusal(f"* GenerateContentRequest.{_snake(at)}.items: missing field.")
    if "items" in schema:
        check_schema(schema["items"], f"{at}.items")
    for i, member in enumerate(schema.get("anyOf") or []):
        check_schema(member, f"{at}.any_of[{i}]")


class FakeGemini:
    """``keys`` are the API keys it takes; ``signature_bytes`` sizes the signatures it gives;
    ``call_ids`` gives each call an id (Gemini 3) or none (older models); ``page_size`` is the
    most models a page of its model list holds."""

    def __init__(self, keys: Sequence[str] = ("gemini-key",), signature_bytes: int = 300,
                 call_ids: bool = True, page_size: int = 2) -> None:
        self.keys = set(keys)
        self.page_size = page_size
        self.signature_bytes = signature_bytes
        self.call_ids = call_ids
        self.requests: List[GeminiRequest] = []
        self.rejections: List[str] = []
        self.issued: Dict[str, Tuple[str, str]] = {}  # signature -> ("call", name) or ("text", text)
        self._queue: List[Any] = []
        self._lock = threading.Lock()
        self._server = ServerThread()
        self.port = 0
        self._calls = 0

    def __enter__(self) -> FakeGemini:
        self.port = self._server.start(self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *replies: Any) -> None:
        with self._lock:
            self._queue.extend(replies)

    @property
    def generations(self) -> List[Dict[str, Any]]:
        return [r.json for r in self.requests if "enerateContent" in r.target]

    def _signature(self, kind: str, what: str) -> str:
        signature = base64.b64encode(os.urandom(self.signature_bytes)).decode()
        self.issued[signature] = (kind, what)
        return signature

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    return
                seen = GeminiRequest(*request)
                self.requests.append(seen)
                try:
                    keep = await self._answer(seen, reader, writer)
                except Refusal as refusal:
                    self.rejections.append(str(refusal))
                    writer.write(json_reply(refusal.status, google_error(refusal.status, str(refusal),
                                                                         refusal.state)))
                    keep = True
                await writer.drain()
                if not keep:
                    return
        finally:
            writer.close()

    async def _answer(self, seen: GeminiRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if seen.header("x-goog-api-key") not in self.keys:
            writer.write(json_reply(400, key_error()))
            return True
        path, _, query = seen.target.partition("?")
        if seen.method == "GET" and path == "/v1beta/models":
            return self._list_models(query, writer)
        match = re.fullmatch(r"/v1beta/models/([\w.-]+):(generateContent|streamGenerateContent|countTokens)", path)
        if not match or seen.method != "POST":
            raise Refusal(f"no route {seen.method} {seen.target}", 404, "NOT_FOUND")
        model, method = match.groups()
        if model not in MODELS:
            raise Refusal(f"models/{model} is not found for API version v1beta, or is not supported for "
                          f"{method}.", 404, "NOT_FOUND")
        body = seen.json
        if not isinstance(body, dict):
            raise Refusal("Invalid JSON payload received.")
        if method == "countTokens":
            inner = body.get("generateContentRequest")
            for key in body:
                if key not in ("generateContentRequest", "contents"):
                    raise _unknown(key, "")
            self.check(inner, model)
            writer.write(json_reply(200, {"totalTokens": len(json.dumps(inner)) // 4}))
            return True
        self.check(body, model)
        with self._lock:
            reply = self._queue.pop(0) if self._queue else Answer([{"text": TEXT}])
        if isinstance(reply, Error):
            writer.write(json_reply(reply.status, reply.body if reply.body is not None else key_error(),
                                    reply.headers))
            return True
        if isinstance(reply, Raw):
            writer.write(reply.data)
            return False
        thinking = (body.get("generationConfig") or {}).get("thinkingConfig") or {}
        chunks = self._chunks(reply, model, bool(thinking.get("includeThoughts")))
        if method == "generateContent":
            writer.write(json_reply(200, self._merged(chunks)))
            return True
        if query != "alt=sse":  # Google's JSON-array framing
            data = ("[" + ",\r\n".join(json.dumps(c) for c in chunks) + "]").encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                         % (len(data), data))
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for number, chunk in enumerate(chunks):
            if reply.drop_after is not None and number >= reply.drop_after:
                return False
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            piece = b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n"
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True

    def _list_models(self, query: str, writer: asyncio.StreamWriter) -> bool:
        """``pageSize`` models a page (at most ``page_size``), paged with ``pageToken`` as Gemini pages them."""
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        token, size = params.get("pageToken", "0"), min(int(params.get("pageSize", "50")), self.page_size)
        start = int(token) if token.isdigit() else 0
        page = {"models": [{"name": f"models/{m}", "displayName": m.replace("-", " ").title(),
                            "supportedGenerationMethods": ["generateContent", "countTokens"]}
                           for m in MODELS[start:start + size]]}
        if start + size < len(MODELS):
            page["nextPageToken"] = str(start + size)
        writer.write(json_reply(200, page))
        return True

    # -- what it refuses -------------------------------------------------------------------

    def check(self, body: Any, model: str) -> None:
        if not isinstance(body, dict):
            raise Refusal("Invalid JSON payload received. Expected an object.")
        for key in body:
            if key not in TOP_KEYS and key != "model":
                raise _unknown(key, "")
        self._check_generation(body.get("generationConfig") or {}, model)
        names = self._check_tools(body)
        self._check_tool_config(body.get("toolConfig"), names)
        system = body.get("systemInstruction")
        if system is not None:
            self._check_parts(system.get("parts"), "system_instruction")
        self._check_contents(body.get("contents"))

    def _check_generation(self, config: Dict[str, Any], model: str) -> None:
        for key in config:
            if key not in GENERATION_KEYS:
                raise _unknown(key, "generation_config")
        if len(config.get("stopSequences") or []) > 5:
            raise Refusal("stop_sequences: at most 5 are allowed")
        if config.get("maxOutputTokens", 0) > 65536:
            raise Refusal("The maximum number of output tokens is 65536, and was given "
                          f"{config['maxOutputTokens']}.")
        thinking = config.get("thinkingConfig") or {}
        for key in thinking:
            if key not in ("thinkingBudget", "thinkingLevel", "includeThoughts"):
                raise _unknown(key, "generation_config.thinking_config")
        if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
            raise Refusal("You can only set only one of thinking budget and thinking level.")
        if "thinkingLevel" in thinking:
            if not model.startswith("gemini-3"):
                raise Refusal("Thinking level is not supported for this model.")
            if str(thinking["thinkingLevel"]).upper() not in ("LOW", "HIGH", "MINIMAL", "MEDIUM"):
                raise Refusal(f"Invalid value at 'generation_config.thinking_config.thinking_level' "
                              f"({thinking['thinkingLevel']})")

    def _check_tools(self, body: Dict[str, Any]) -> List[str]:
        names: List[str] = []
        for i, tool in enumerate(body.get("tools") or []):
            for key in tool:
                if key not in ("functionDeclarations", "googleSearch", "codeExecution", "urlContext"):
                    raise _unknown(key, f"tools[{i}]")
            for j, declaration in enumerate(tool.get("functionDeclarations") or []):
                for key in declaration:
                    if key not in DECLARATION_KEYS:
                        raise _unknown(key, f"tools[{i}].function_declarations[{j}]")
                name = declaration.get("name")
                if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}", name):
                    raise Refusal(f"* GenerateContentRequest.tools[{i}].function_declarations[{j}].name: Invalid "
                                  "function name.")
                names.append(name)
                if "parameters" in declaration:
                    check_schema(declaration["parameters"], f"tools[{i}].function_declarations[{j}].parameters")
                    if str(declaration["parameters"].get("type", "")).lower() != "object":
                        raise Refusal(f"Unable to submit request because {name} functionDeclaration parameters "
                                      "schema should be of type OBJECT.")
        return names

    @staticmethod
    def _check_tool_config(config: Any, names: List[str]) -> None:
        if config is None:
            return
        calling = config.get("functionCallingConfig") or {}
        if calling.get("mode") not in ("AUTO", "ANY", "NONE", "VALIDATED"):
            raise Refusal(f"Invalid value at 'tool_config.function_calling_config.mode' ({calling.get('mode')})")
        for name in calling.get("allowedFunctionNames") or []:
            if calling.get("mode") != "ANY" or name not in names:
                raise Refusal("allowed_function_names must name declared functions, with mode ANY")

    @staticmethod
    def _check_parts(parts: Any, at: str) -> None:
        if not isinstance(parts, list) or not parts:
            raise Refusal(f"* GenerateContentRequest.{at}.parts: contents.parts must not be empty.")
        for k, part in enumerate(parts):
            for key in part:
                if key not in PART_KEYS:
                    raise _unknown(key, f"{at}.parts[{k}]")
            if sum(key in part for key in PART_DATA) != 1:
                raise Refusal(f"* GenerateContentRequest.{at}.parts[{k}].data: required oneof field 'data' must "
                              "have one initialized field")
            if "functionResponse" in part and not isinstance(part["functionResponse"].get("response"), dict):
                raise Refusal(f"* GenerateContentRequest.{at}.parts[{k}].function_response.response: must be an "
                              "object")

    def _check_contents(self, contents: Any) -> None:
        if not isinstance(contents, list) or not contents:
            raise Refusal("* GenerateContentRequest.contents: contents is not specified")
        current = 0  # where the current turn begins: after the user last wrote
        for i, content in enumerate(contents):
            if content.get("role") not in ("user", "model"):
                raise Refusal(f"Please use a valid role: user, model. (contents[{i}])")
            self._check_parts(content.get("parts"), f"contents[{i}]")
            if content["role"] == "user" and user_wrote(content["parts"]):
                current = i + 1
        for i, content in enumerate(contents):
            calls = [p["functionCall"] for p in content["parts"] if "functionCall" in p]
            responses = [p["functionResponse"] for p in content["parts"] if "functionResponse" in p]
            before = [p["functionCall"] for p in contents[i - 1]["parts"] if "functionCall" in p] if i else []
            if content["role"] == "user" and (responses or before):
                if len(responses) != len(before):
                    raise Refusal("Please ensure that the number of function response parts is equal to the number "
                                  "of function call parts of the function call turn.")
                for answered, asked in zip(responses, before):
                    if answered.get("name") != asked.get("name") or answered.get("id") != asked.get("id"):
                        raise Refusal(f"function response {answered.get('name')!r} does not answer the call "
                                      f"{asked.get('name')!r} made at its position (contents[{i}])")
            if content["role"] == "model":
                if calls and i + 1 < len(contents) and contents[i + 1]["role"] != "user":
                    raise Refusal("Please ensure that function call turn comes immediately before a function "
                                  "response turn.")
                self._check_signatures(content["parts"], i, i >= current)

    def _check_signatures(self, parts: List[Dict[str, Any]], index: int, current: bool) -> None:
        first_call = next((k for k, p in enumerate(parts) if "functionCall" in p), None)
        for k, part in enumerate(parts):
            signature = part.get("thoughtSignature")
            if signature is None or signature == SKIP_SIGNATURE:
                continue
            issued = self.issued.get(signature)
            if "functionCall" in part:
                fits = issued == ("call", part["functionCall"]["name"]) and k == first_call
            elif part.get("thought"):
                fits = issued is not None and issued[0] == "thought"
            else:
                fits = issued is not None and issued[0] == "text"
            if not fits:
                raise Refusal(f"Corrupted thought signature. (contents[{index}].parts[{k}])")
        if current and first_call is not None and "thoughtSignature" not in parts[first_call]:
            name = parts[first_call]["functionCall"]["name"]
            raise Refusal("Function call is missing a thought_signature in functionCall parts. This is required for "
                          "tools to work correctly, and missing thought_signature may lead to degraded model "
                          f"performance. Additional data, function call `default_api:{name}` , position "
                          f"{first_call + 1}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures "
                          "for more details.")

    # -- how it answers --------------------------------------------------------------------

    def _chunks(self, reply: Answer, model: str, thoughts: bool) -> List[Dict[str, Any]]:
        """The answer as Gemini streams it: thoughts, text in two pieces, each call whole; the
        signatures on the first call, or on an empty last part after text."""
        usage = {"promptTokenCount": 40, "candidatesTokenCount": 0, "totalTokenCount": 40}
        if reply.block_reason:
            return [{"promptFeedback": {"blockReason": reply.block_reason}, "usageMetadata": usage,
                     "modelVersion": model}]
        parts: List[Dict[str, Any]] = []
        signed = False
        for part in reply.parts:
            part = json.loads(json.dumps(part))
            if part.get("thought") and not thoughts:
                continue
            if "functionCall" in part:
                self._calls += 1
                if self.call_ids and "id" not in part["functionCall"]:
                    part["functionCall"]["id"] = f"call{self._calls}x"
                if not signed:
                    part["thoughtSignature"] = self._signature("call", part["functionCall"]["name"])
                    signed = True
                parts.append(part)
            elif "text" in part and not part.get("thought") and len(part["text"]) > 8:
                half = len(part["text"]) // 2
                parts += [{"text": part["text"][:half]}, {"text": part["text"][half:]}]
            else:
                parts.append(part)
        if not signed and any("text" in p and not p.get("thought") for p in parts):
            parts.append({"text": "", "thoughtSignature": self._signature("text", "")})
        chunks = []
        for number, part in enumerate(parts):
            usage = dict(usage, candidatesTokenCount=usage["candidatesTokenCount"] + 3,
                         totalTokenCount=usage["totalTokenCount"] + 3)
            if part.get("thought"):
                usage["thoughtsTokenCount"] = usage.get("thoughtsTokenCount", 0) + 5
            candidate: Dict[str, Any] = {"content": {"parts": [part], "role": "model"}, "index": 0}
            if number == len(parts) - 1:
                candidate["finishReason"] = reply.finish
            chunks.append({"candidates": [candidate], "usageMetadata": usage, "modelVersion": model,
                           "responseId": "fakeResponse01"})
        if not chunks:
            chunks.append({"candidates": [{"content": {"parts": [{"text": ""}], "role": "model"},
                                           "finishReason": reply.finish, "index": 0}], "usageMetadata": usage})
        return chunks

    @staticmethod
    def _merged(chunks: List[Dict[str, Any]]) -> Dict[str, Any]:
        """The generateContent body for the same answer: its parts in one candidate, text pieces joined
        (the signature of an answer without calls then sits on its last text part)."""
        parts: List[Dict[str, Any]] = []
        for chunk in chunks:
            for part in ((chunk.get("candidates") or [{}])[0].get("content") or {}).get("parts") or []:
                last = parts[-1] if parts else None
                if last is not None and "text" in part and "text" in last and bool(part.get("thought")) == \
                        bool(last.get("thought")) and "thoughtSignature" not in last:
                    last["text"] += part["text"]
                    if "thoughtSignature" in part:
                        last["thoughtSignature"] = part["thoughtSignature"]
                else:
                    parts.append(dict(part))
        body = dict(chunks[-1])
        if "candidates" in body:
            body["candidates"] = [dict(body["candidates"][0], content={"parts": parts, "role": "model"})]
        return body
