"""What a strict Anthropic-compatible server refuses, written from the API documentation.

``violation(headers, body, ...)`` returns the 400 message such a server would send for the first
problem it finds, worded as Anthropic and pydantic-based servers word them, or None.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

TOP_FIELDS = {"model", "messages", "system", "max_tokens", "stream", "temperature", "top_p", "top_k",
              "stop_sequences", "tools", "tool_choice", "thinking", "metadata"}
TOOL_FIELDS = {"name", "description", "input_schema", "type"}
BLOCK_FIELDS = {
    "text": {"type", "text", "citations"},
    "image": {"type", "source"},
    "document": {"type", "source", "title", "context", "citations"},
    "tool_use": {"type", "id", "name", "input"},
    "tool_result": {"type", "tool_use_id", "content", "is_error"},
    "thinking": {"type", "thinking", "signature"},
    "redacted_thinking": {"type", "data"},
}


def _extra(path: str) -> str:
    return f"{path}: Extra inputs are not permitted"


def _blocks(content: Any) -> List[Any]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])


def violation(headers: List[Tuple[str, str]], body: Dict[str, Any], *, allowed_betas: Iterable[str] = (),
              signature_prefix: Optional[str] = None) -> Optional[str]:
    betas = [b.strip() for k, v in headers if k.lower() == "anthropic-beta" for b in v.split(",") if b.strip()]
    unexpected = [b for b in betas if b not in set(allowed_betas)]
    if unexpected:
        listed = ", ".join(f"`{b}`" for b in unexpected)
        return (f"Unexpected value(s) {listed} for the `anthropic-beta` header. Please consult our documentation "
                "at docs.anthropic.com or try again without the header.")
    for key in body:
        if key not in TOP_FIELDS:
            return _extra(key)
    thinking = body.get("thinking")
    if thinking is not None:
        if thinking.get("type") not in ("enabled", "disabled"):
            return "thinking.type: Input tag 'adaptive' found using 'type' does not match any of the expected tags"
        for key in thinking:
            if key not in ("type", "budget_tokens"):
                return _extra(f"thinking.{thinking['type']}.{key}")
        budget, ceiling = thinking.get("budget_tokens", 0), body.get("max_tokens", 10**9)
        if thinking["type"] == "enabled" and not 1024 <= budget < ceiling:
            return "thinking.enabled.budget_tokens: must be >= 1024 and less than max_tokens"
    for i, tool in enumerate(body.get("tools") or []):
        if tool.get("type") not in (None, "custom"):
            return f"tools.{i}: Input tag '{tool['type']}' found using 'type' does not match any of the expected tags"
        for key in tool:
            if key not in TOOL_FIELDS:
                return _extra(f"tools.{i}.custom.{key}")
    system = body.get("system")
    if isinstance(system, list):
        for i, block in enumerate(system):
            for key in block:
                if key not in BLOCK_FIELDS["text"]:
                    return _extra(f"system.{i}.{key}")
    messages = body.get("messages") or []
    if messages and messages[0].get("role") != "user":
        return "messages: first message must use the \"user\" role"
    previous_tool_ids: List[str] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if i and messages[i - 1].get("role") == role:
            return "messages: roles must alternate between \"user\" and \"assistant\", but found multiple " \
                   f"\"{role}\" roles in a row"
        content = message.get("content")
        if content in ("", []):
            return f"messages.{i}: all messages must have non-empty content"
        blocks = _blocks(content)
        results = []
        for j, block in enumerate(blocks):
            kind = block.get("type")
            for key in block:
                if key not in BLOCK_FIELDS.get(kind, {"type"}):
                    return _extra(f"messages.{i}.content.{j}.{kind}.{key}")
            if kind == "text" and not block.get("text", "").strip():
                return f"messages.{i}.content.{j}.text: text content blocks must contain non-whitespace text"
            if kind == "thinking" and signature_prefix is not None and \
                    not str(block.get("signature", "")).startswith(signature_prefix):
                return f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
            if kind == "tool_result":
                if role != "user" or block.get("tool_use_id") not in previous_tool_ids:
                    return (f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                            f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                            "`tool_use` block in the previous message.")
                if any(b.get("type") != "tool_result" for b in blocks[:j]):
                    return f"messages.{i}.content.{j}: `tool_result` blocks must come first in the user message"
                results.append(block["tool_use_id"])
        missing = [t for t in previous_tool_ids if t not in results]
        if missing:
            return (f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block "
                    "in the next message.")
        previous_tool_ids = [b["id"] for b in blocks if b.get("type") == "tool_use"] if role == "assistant" else []
    if previous_tool_ids:
        return (f"messages.{len(messages) - 1}: `tool_use` ids were found without `tool_result` blocks immediately "
                f"after: {', '.join(previous_tool_ids)}")
    return None
